/* Data files that ship with clip-tools (the vocabularies), found without options. */
#ifndef CLIP_DATAFILE_H
#define CLIP_DATAFILE_H

#define WORDPIECE_VOCAB_FILE "bert-chinese-vocab.txt"  /* Chinese BERT WordPiece */
#define BPE_MERGES_FILE "bpe_simple_vocab_16e6.txt.gz" /* OpenAI CLIP BPE merges */

/* The path of the shipped data file `name`, looked for in order in
 *   $CLIP_TOOLS_DATA (when set: only there),
 *   <folder of the running program>/../share/clip-tools (an installed tree, wherever it was
 *     installed; also the build tree, where bin/ stands beside share/clip-tools/),
 *   CLIP_DATADIR, the PREFIX/share/clip-tools the program was built for.
 * Returns a malloc'd path, or NULL after clip_set_error naming every place tried. */
char *clip_data_path(const char *name);

#endif
