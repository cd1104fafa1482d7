# The main job on the embedded sample (tests/fixtures/flickr8k-mini: 8 Flickr8k-CN val images):
# prepare and tokenize (with the shipped vocabulary), train a tiny model on them, embed, measure recall.
DEMO_DIR := build/demo

demo: all
	@mkdir -p $(DEMO_DIR)
	bin/clip-prep --annotations tests/fixtures/flickr8k-mini/cn_mini.json \
	    --root tests/fixtures/flickr8k-mini --progress \
	  | bin/clip-tokenize -o $(DEMO_DIR)/mini.tar
	tar tvf $(DEMO_DIR)/mini.tar | head -6
	@echo "$(DEMO_DIR)/mini.tar: $$(tar tf $(DEMO_DIR)/mini.tar | grep -c 'img.npy$$') samples"
	# a tiny model from scratch on them, then embed and measure its recall
	bin/clip-train --arch tiny,resolution=224,patch=32 --train $(DEMO_DIR)/mini.tar -b 4 \
	    --epochs 40 --lr 2e-3 --warmup 5 --no-augment --quiet --save $(DEMO_DIR)/tiny.safetensors \
	    --log $(DEMO_DIR)/train.jsonl
	bin/clip-embed --model $(DEMO_DIR)/tiny.safetensors -i $(DEMO_DIR)/mini.tar \
	  | bin/clip-recall --table

.PHONY: demo
