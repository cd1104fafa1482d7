# The main job on the embedded sample (tests/fixtures/flickr8k-mini: 8 Flickr8k-CN val images).
DEMO_DIR := build/demo
VOCAB ?= ../shared/data/vocab/bert-chinese-vocab.txt

demo: all
	@mkdir -p $(DEMO_DIR)
	bin/clip-prep --annotations tests/fixtures/flickr8k-mini/cn_mini.json \
	    --root tests/fixtures/flickr8k-mini --progress \
	  | bin/clip-tokenize --vocab $(VOCAB) -o $(DEMO_DIR)/mini.tar
	tar tvf $(DEMO_DIR)/mini.tar | head -6
	@echo "$(DEMO_DIR)/mini.tar: $$(tar tf $(DEMO_DIR)/mini.tar | grep -c 'img.npy$$') samples"

.PHONY: demo
