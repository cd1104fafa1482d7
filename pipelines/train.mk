# The reference workflow on a Flickr8k-CN layout (cn_train.json, cn_val.json,
# flickr8k-images/): prepare, fine-tune, evaluate, draw the curves.
#
#   make train INIT=ViT-B-16-OpenAI.pth TEXT_MODEL=bert-from-clip-chinese-1M  # fine-tune
#   make train ARCH=small EPOCHS=30 BATCH=64 LR=5e-4                          # from scratch
#   make train ARCH=small,text=clip CAPTIONS=en ...   # English captions, OpenAI's text tower
#   make eval     make plots
#   make train NPROC=4 ...                    # 4 data-parallel ranks (mpirun), BATCH each
#   make train NPROC=4 HOSTS=a,b ...          # over machines a and b, 2 ranks each (TCP)
#
# `make train` resumes an interrupted run (its state is $(RUN)/model.safetensors.state);
# `make clean-train` starts over.

# DATA: a Flickr8k-CN folder (not shipped: bring your own copy)
DATA ?=
# CAPTIONS=en: the English captions (en_train.json, en_val.json) tokenised with OpenAI's BPE,
# for the English text tower (ARCH=...,text=clip or an OpenAI INIT); cn: the Chinese ones (BERT)
CAPTIONS ?= cn
ANNOTATIONS_TRAIN = $(CAPTIONS)_train.json
ANNOTATIONS_VAL = $(CAPTIONS)_val.json
TOKENIZE_FLAGS = $(if $(filter en,$(CAPTIONS)),--bpe,$(if $(VOCAB),--vocab $(VOCAB)))
VOCAB ?=
INIT ?=
TEXT_MODEL ?=
ARCH ?=
EPOCHS ?= 40
BATCH ?= 32
LR ?= 5e-5
WARMUP ?= 100
AMP ?= 0
DEVICE ?= cpu
SEED ?= 0
# image side stored by clip-prep: the model's resolution (112 for ARCH=small)
SIZE ?= $(if $(findstring small,$(ARCH)),112,$(if $(findstring tiny,$(ARCH)),32,224))
RUN ?= runs/$(if $(ARCH),$(subst =,-,$(subst $(comma),_,$(ARCH))),finetune)
TRAIN_FLAGS ?=
# NPROC > 1: data-parallel ranks under mpirun (the reference's --nproc_per_node), each a batch of
# BATCH: the global batch is NPROC x BATCH. HOSTS=a,b spreads them evenly over those machines
# (one shared file system for DATA and RUN) over Open MPI's TCP transport. THREADS: -t per rank.
NPROC ?= 1
HOSTS ?=
THREADS ?=
MPIRUN ?= mpirun
MPI_FLAGS ?=
comma := ,
empty :=
space := $(empty) $(empty)
HOST_LIST = $(subst $(comma),$(space),$(HOSTS))
HOST_SLOTS = $(subst $(space),$(comma),$(foreach h,$(HOST_LIST),$(h):$(shell echo $$(( ($(NPROC) + $(words $(HOST_LIST)) - 1) / $(words $(HOST_LIST)) )))))
# the ranks get 60 s between mpirun's SIGTERM and its SIGKILL to finish a step and save
LAUNCH = $(if $(filter-out 0 1,$(NPROC)),$(strip $(MPIRUN) -np $(NPROC) --mca odls_base_sigkill_timeout 60 \
    $(if $(HOSTS),--host $(HOST_SLOTS) --mca btl tcp$(comma)self) $(MPI_FLAGS)) )

MODEL_ARGS = $(if $(ARCH),--arch $(ARCH),--init $(INIT) $(if $(TEXT_MODEL),--text-model $(TEXT_MODEL)))

define need_data
	@test -n "$(DATA)" || { echo "make $@: set DATA=FOLDER, a Flickr8k-CN layout (cn_train.json, cn_val.json, flickr8k-images/)" >&2; exit 2; }
	@test -f "$(DATA)/$(1)" || { echo "make $@: $(DATA)/$(1): not found (DATA must hold $(ANNOTATIONS_TRAIN), $(ANNOTATIONS_VAL), flickr8k-images/)" >&2; exit 2; }
endef

$(RUN)/train-$(SIZE).tar: | all
	$(call need_data,$(ANNOTATIONS_TRAIN))
	@mkdir -p $(@D)
	bin/clip-prep --annotations $(DATA)/$(ANNOTATIONS_TRAIN) --root $(DATA) --size $(SIZE) --progress \
	  | bin/clip-tokenize $(TOKENIZE_FLAGS) -o $@

$(RUN)/val-$(SIZE).tar: | all
	$(call need_data,$(ANNOTATIONS_VAL))
	@mkdir -p $(@D)
	bin/clip-prep --annotations $(DATA)/$(ANNOTATIONS_VAL) --root $(DATA) --size $(SIZE) --progress \
	  | bin/clip-tokenize $(TOKENIZE_FLAGS) -o $@

train: all $(RUN)/train-$(SIZE).tar $(RUN)/val-$(SIZE).tar
	@test -n "$(ARCH)$(INIT)" || { echo "make train: set INIT=CKPT [TEXT_MODEL=DIR] or ARCH=small" >&2; exit 2; }
	$(LAUNCH)bin/clip-train $(MODEL_ARGS) --train $(RUN)/train-$(SIZE).tar --val $(RUN)/val-$(SIZE).tar \
	    --epochs $(EPOCHS) -b $(BATCH) --lr $(LR) --warmup $(WARMUP) --seed $(SEED) \
	    --device $(DEVICE) $(if $(filter 1 yes,$(AMP)),--amp) --eval-at-start $(if $(THREADS),-t $(THREADS)) \
	    --save $(RUN)/model.safetensors --log $(RUN)/log.jsonl --resume --progress $(TRAIN_FLAGS)

eval: all $(RUN)/val-$(SIZE).tar
	bin/clip-embed --model $(RUN)/model.safetensors -i $(RUN)/val-$(SIZE).tar --progress \
	  | bin/clip-recall --table --json-out $(RUN)/recall.json

# loss per step and recall per epoch from the JSON-lines log, drawn with gnuplot
plots: $(RUN)/log.jsonl
	grep '"loss"' $< | sed 's/.*"step":\([0-9]*\).*"loss":\([-0-9.e]*\).*/\1 \2/' > $(RUN)/loss.dat
	grep '"val"' $< | sed 's/.*"epoch":\([0-9]*\).*"txt_r_mean":\([0-9.e-]*\).*"img_r_mean":\([0-9.e-]*\),"r_mean":\([0-9.e-]*\).*/\1 \2 \3 \4/' > $(RUN)/recall.dat
	gnuplot -e "set terminal pngcairo size 900,500; set output '$(RUN)/loss.png'; \
	    set title 'training loss ($(RUN))'; set xlabel 'step'; set ylabel 'loss'; set grid; \
	    plot '$(RUN)/loss.dat' using 1:2 with lines lc rgb '#bbbbbb' title 'per step', \
	         '' using 1:2 smooth bezier lw 2 lc rgb '#1f77b4' title 'smoothed'"
	gnuplot -e "set terminal pngcairo size 900,500; set output '$(RUN)/recall.png'; \
	    set title 'Flickr8k val recall, $(CAPTIONS) captions ($(RUN))'; set xlabel 'epoch'; set ylabel 'mean recall (%)'; \
	    set grid; set key left top; \
	    plot '$(RUN)/recall.dat' using 1:2 with linespoints title 'image->text R mean', \
	         '' using 1:3 with linespoints title 'text->image R mean', \
	         '' using 1:4 with linespoints lw 2 title 'overall mean'"
	@echo "$(RUN)/loss.png $(RUN)/recall.png"

clean-train:
	rm -f $(RUN)/model.safetensors $(RUN)/model.safetensors.state $(RUN)/log.jsonl

.PHONY: train eval plots clean-train
