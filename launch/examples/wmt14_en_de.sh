#!/usr/bin/env bash
# The paper's workload: WMT14 English->German from the official files, a joint SentencePiece BPE of 37,000
# pieces, the base preset on every GPU of the node, the average of the last checkpoints, then newstest2014 with
# beam 4 and length penalty 0.6, and BLEU.
#
#   launch/examples/wmt14_en_de.sh DATA_DIR RUN_DIR [--set key=value ...]
#
# DATA_DIR is laid out as the official archives unpack (each file may also be gzip-compressed, NAME.gz):
#   training/europarl-v7.de-en.{en,de}              (training-parallel-europarl-v7.tgz)
#   commoncrawl.de-en.{en,de}                       (training-parallel-commoncrawl.tgz)
#   training/news-commentary-v9.de-en.{en,de}       (training-parallel-nc-v9.tgz)
#   dev/newstest2013.{en,de}                        (dev.tgz)                              validation
#   test-full/newstest2014-deen-src.en.sgm          (test-full.tgz)                        test (SGML)
#   test-full/newstest2014-deen-ref.de.sgm
# They come from https://www.statmt.org/wmt14/translation-task.html; fetching them is left to the user
# (this script never touches the network).
#
# Steps, each skipped when its output exists (so running the script again resumes):
#   RUN_DIR/text/   the training corpora concatenated, the SGML test set as plain text (see below)
#   RUN_DIR/data/   `aiayn prepare`: joint BPE of VOCAB pieces, training pairs dropped when a side is empty,
#                   longer than 250 tokens or 1.5 times longer than the other side (the filters of fairseq's and
#                   Marian's WMT14 recipes, clean-corpus-n.perl 1 250 with ratio 1.5, on the BPE tokens)
#   RUN_DIR/run/    `aiayn train` with launch/configs/base.yaml and the extra arguments (resumed when stopped)
#   RUN_DIR/newstest2014.json   `aiayn eval --bleu` of RUN_DIR/run/averaged.h5 (beam 4, alpha 0.6)
#
# Test set: segments are the "<seg ...>TEXT</seg>" lines. The reference is extracted exactly as sacreBLEU
# extracts wmt14/full (whitespace trimmed and collapsed, the text otherwise verbatim), so the BLEU printed is
# sacreBLEU's `-t wmt14/full -l en-de` figure; the source given to the model has its SGML entities (&amp;
# &lt; &gt; &quot; &apos; &#N; &#xN;) replaced by the characters they stand for.
#
# Environment: RANKS (ranks, default one per GPU that nvidia-smi lists, else 1), VOCAB (default 37000),
# AIAYN (the aiayn executable; default build/aiayn, built first). `--set device=cpu` (e.g. with
# `--set train.max_steps=50`) tries the recipe on a CPU; the preset's bf16 is then replaced by fp32.
# Exit status: 0 done; 1 an error (a missing or misaligned file is named); 75 training stopped by a signal
# after its checkpoint (run the same command again to resume).
set -euo pipefail
usage="usage: $0 DATA_DIR RUN_DIR [--set key=value ...]"
data=${1:?$usage}; run=${2:?$usage}; shift 2
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
vocab=${VOCAB:-37000}
fail() { echo "wmt14_en_de: $*" >&2; exit 1; }

extra=("$@")
for ((i = 0; i < ${#extra[@]}; i += 2)); do
  [[ ${extra[i]} == --set && $((i + 1)) -lt ${#extra[@]} ]] || fail "extra arguments must be --set key=value pairs ($usage)"
done
if [[ " ${extra[*]} " == *" device=cpu "* && " ${extra[*]} " != *" precision="* ]]; then
  extra+=(--set precision=fp32)
fi

if [[ -n ${AIAYN:-} ]]; then
  aiayn=$AIAYN
else
  "$root/launch/build.sh" --target aiayn >/dev/null
  aiayn=$root/build/aiayn
fi
[[ -x $aiayn ]] || fail "$aiayn: not an executable"

if [[ -n ${RANKS:-} ]]; then
  ranks=$RANKS
elif command -v nvidia-smi >/dev/null && gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU') && ((gpus > 0)); then
  ranks=$gpus
else
  ranks=1
fi
[[ $ranks =~ ^[1-9][0-9]*$ ]] || fail "RANKS must be a positive integer (got '$ranks')"
launcher=()
((ranks > 1)) && launcher=(mpirun -np "$ranks" --bind-to none)
export OMPI_ALLOW_RUN_AS_ROOT=${OMPI_ALLOW_RUN_AS_ROOT:-1} OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=${OMPI_ALLOW_RUN_AS_ROOT_CONFIRM:-1}

# The path of DATA_DIR/NAME or DATA_DIR/NAME.gz, whichever exists.
find_file() {
  if [[ -f $data/$1 ]]; then echo "$data/$1"
  elif [[ -f $data/$1.gz ]]; then echo "$data/$1.gz"
  else fail "$data/$1 (or $1.gz) not found: DATA_DIR must hold the WMT14 files as the official archives unpack (see $0)"
  fi
}
read_text() { if [[ $1 == *.gz ]]; then gzip -dc -- "$1"; else cat -- "$1"; fi; }
line_count() { read_text "$1" | wc -l; }

# Strict UTF-8 in and out; the SGML segment's text, with entities decoded when the first argument is 1.
sgml_text() {
  read_text "$2" | perl -CSD -ne '
    BEGIN { $decode = shift @ARGV; }
    next unless /^<seg /;
    chomp;
    s/<seg.*?>(.*)<\/seg>.*?/$1/;
    s/^\s+|\s+$//g; s/\s+/ /g;
    if ($decode) {
      s/&#[xX]([0-9a-fA-F]+);/chr(hex($1))/ge; s/&#([0-9]+);/chr($1)/ge;
      s/&lt;/</g; s/&gt;/>/g; s/&quot;/"/g; s/&apos;/\x27/g; s/&amp;/&/g;
    }
    print "$_\n";' "$1"
}

text=$run/text
if [[ ! -f $text/.done ]]; then
  echo "==> collecting the WMT14 text into $text"
  mkdir -p "$text"
  : >"$text/train.en"; : >"$text/train.de"
  for corpus in training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v9.de-en; do
    en=$(find_file "$corpus.en"); de=$(find_file "$corpus.de")
    n_en=$(line_count "$en"); n_de=$(line_count "$de")
    ((n_en == n_de)) || fail "$en has $n_en lines but $de has $n_de: the files must be aligned line by line"
    echo "    $corpus: $n_en pairs"
    read_text "$en" >>"$text/train.en"
    read_text "$de" >>"$text/train.de"
  done
  dev_en=$(find_file dev/newstest2013.en); dev_de=$(find_file dev/newstest2013.de)
  read_text "$dev_en" >"$text/valid.en"
  read_text "$dev_de" >"$text/valid.de"
  src_sgm=$(find_file test-full/newstest2014-deen-src.en.sgm); ref_sgm=$(find_file test-full/newstest2014-deen-ref.de.sgm)
  sgml_text 1 "$src_sgm" >"$text/test.en"
  sgml_text 0 "$ref_sgm" >"$text/test.de"
  n_src=$(wc -l <"$text/test.en"); n_ref=$(wc -l <"$text/test.de")
  ((n_src > 0)) || fail "$src_sgm: no <seg> lines"
  ((n_src == n_ref)) || fail "$src_sgm has $n_src segments but $ref_sgm has $n_ref"
  echo "    newstest2013: $(wc -l <"$text/valid.en") pairs; newstest2014 (full): $n_src segments"
  touch "$text/.done"
fi

if [[ ! -f $run/data/train.h5 || ! -f $run/data/test.h5 ]]; then
  echo "==> preparing (joint BPE of $vocab pieces) into $run/data"
  "$aiayn" prepare --train-src "$text/train.en" --train-tgt "$text/train.de" \
    --valid-src "$text/valid.en" --valid-tgt "$text/valid.de" --test-src "$text/test.en" --test-tgt "$text/test.de" \
    --vocab-size "$vocab" --max-len 251 --max-ratio 1.5 --out "$run/data"
fi

resume=(); [[ -f $run/run/checkpoints/LATEST ]] && resume=(--resume)
echo "==> training the base preset on $ranks rank(s)"
"$root/launch/stoppable.sh" "${launcher[@]}" "$aiayn" train --config "$root/launch/configs/base.yaml" \
  --data "$run/data" --run-dir "$run/run" "${resume[@]}" "${extra[@]}"

echo "==> newstest2014: beam 4, length penalty 0.6, averaged checkpoint"
"${launcher[@]}" "$aiayn" eval --checkpoint "$run/run/averaged.h5" --data "$run/data/test.h5" --bleu --beam 4 \
  --lenpen 0.6 >"$run/newstest2014.json"
cat "$run/newstest2014.json"
