# clip-recall: the recall fixture from the NumPy reference, and its speed beside NumPy's.

# regenerate tests/fixtures/recall (NumPy only)
fixtures-recall:
	/usr/bin/python3 tests/ref/recall_ref.py --make-fixture tests/fixtures/recall

# BENCH_RECALL_N images x 5 captions x 512 dims, synthetic
BENCH_RECALL_N ?= 10000
bench-recall: bin/clip-recall
	@mkdir -p build
	/usr/bin/python3 tests/ref/recall_bench_stream.py build/recall_bench.tar $(BENCH_RECALL_N) 5 512
	bin/clip-recall -v --table -i build/recall_bench.tar
	/usr/bin/python3 tests/ref/bench_recall.py bin/clip-recall build/recall_bench.tar

.PHONY: fixtures-recall bench-recall
