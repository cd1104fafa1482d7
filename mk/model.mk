# The model forward pass: PyTorch-reference fixtures and the embedding benchmark.

fixtures-model:
	/usr/bin/python3 tests/ref/model_ref.py fixtures tests/fixtures/model

# full-size ViT-B/16 + BERT-base with random weights (750 MB, never committed)
build/bench/vit-b-16-bert-base.pth: tests/ref/model_ref.py
	/usr/bin/python3 tests/ref/model_ref.py bench build/bench

bench-embed: build/bench/bench_embed build/bench/vit-b-16-bert-base.pth bin/clip-prep bin/clip-tokenize bin/clip-embed
	DATA='$(DATA)' /usr/bin/python3 tests/ref/bench_embed.py build/bench/vit-b-16-bert-base.pth build/bench/bench_embed

.PHONY: fixtures-model bench-embed
