#!/usr/bin/env python3
"""Translates stdin to stdout with a model written by `aiayn export --format ctranslate2`.

  python3 launch/ct2_translate.py --model DIR [--beam 4] [--lenpen 0.5] [--threads 2] [--compute-type int8] < src > hyp

The same line contract as `aiayn translate`: one output line per input line, an empty line for an empty line.
--stats prints one JSON object on stderr: sentences, target tokens (EOS excluded), load and translate seconds.
Needs the ctranslate2 and sentencepiece packages.
"""
import argparse
import json
import os
import sys
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="folder written by aiayn export")
    parser.add_argument("--beam", type=int, default=4, help="beam size (1 = greedy)")
    parser.add_argument("--lenpen", type=float, default=0.45,
                        help="CTranslate2's own length_penalty beta: log p(Y) / (|Y| + 1)^beta, EOS counted (README: "
                             "the closest setting to aiayn's GNMT alpha 0.6)")
    parser.add_argument("--gnmt-alpha", type=float, default=None,
                        help="rank CTranslate2's finished hypotheses by aiayn's GNMT rule instead: "
                             "log p(Y) / ((5 + |Y| + 1) / 6)^alpha, |Y| + 1 counting EOS")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--compute-type", default="default", help="float32, int8, ... (default: as saved)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per decoding batch (0: one batch)")
    parser.add_argument("--one-call", action="store_true",
                        help="one translate_batch call for all lines (CTranslate2 sorts and batches them itself), "
                             "limited to the longest source + EOS + max_len_b: faster, but a sentence may then run past "
                             "its own aiayn limit")
    parser.add_argument("--max-len-b", type=int, default=50,
                        help="at most (source tokens + EOS + N) output tokens, as aiayn's eval.max_len_b; "
                             "sentences are decoded in groups of one source length, since CTranslate2's limit is per call")
    parser.add_argument("--stats", action="store_true", help="print timing JSON on stderr")
    args = parser.parse_args()

    t0 = time.perf_counter()
    import ctranslate2
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    translator = ctranslate2.Translator(args.model, device="cpu", compute_type=args.compute_type,
                                        inter_threads=1, intra_threads=args.threads)
    t1 = time.perf_counter()
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    pieces = sp.encode(lines, out_type=str)
    by_length = {}
    for i, p in enumerate(pieces):
        if p:  # empty in, empty out (as aiayn translate)
            by_length.setdefault(len(p), []).append(i)
    out = [""] * len(lines)
    tokens = 0
    groups = sorted(by_length.items())
    if args.one_call and groups:
        groups = [(groups[-1][0], sorted(i for _, g in groups for i in g))]
    for length, group in groups:
        # aiayn: at most source length (EOS included) + max_len_b tokens, then EOS is forced; CTranslate2 stops
        # after max_decoding_length tokens (EOS excluded), so the greedy hypotheses agree token for token.
        gnmt = args.gnmt_alpha is not None and args.beam > 1
        results = translator.translate_batch(
            [pieces[i] for i in group], max_batch_size=args.batch_size, beam_size=args.beam,
            length_penalty=args.lenpen, max_decoding_length=length + 1 + args.max_len_b,
            min_decoding_length=0, num_hypotheses=args.beam if gnmt else 1, return_scores=gnmt)
        for i, r in zip(group, results):
            hyp = r.hypotheses[0]
            if gnmt:
                # With a length penalty CTranslate2 stops a sentence, as aiayn does, once `beam` hypotheses have
                # finished, and returns the best `beam` of them by log p(Y) / (|Y| + 1)^beta (EOS counted); undo
                # that and rank them by GNMT's penalty (beta near the GNMT slope keeps GNMT's best among them).
                def gnmt_score(k):
                    m = len(r.hypotheses[k]) + 1
                    return r.scores[k] * m ** args.lenpen / ((5.0 + m) / 6.0) ** args.gnmt_alpha
                hyp = r.hypotheses[max(range(len(r.hypotheses)), key=lambda k: (gnmt_score(k), -k))]
            tokens += len(hyp)
            out[i] = sp.decode_pieces(hyp)
    t2 = time.perf_counter()
    sys.stdout.write("".join(line + "\n" for line in out))
    if args.stats:
        print(json.dumps({"sentences": len(lines), "tgt_tokens": tokens, "load_s": t1 - t0, "translate_s": t2 - t1}),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
