#!/usr/bin/env python3
"""Builds a CTranslate2 model from the bundle `aiayn export` writes (see trainer/include/trainer/export.hpp).

Run by `aiayn export`, not by hand: python3 export_ctranslate2.py --bundle DIR --out MODEL_DIR

The mapping, with CTranslate2's own TransformerSpec (post-norm, ReLU, no final LayerNorm):
  embedding/weight                  -> encoder and decoder embeddings and the output projection (shared; CTranslate2
                                       stores it once), scaled by sqrt(d_model) on input (scale_embeddings)
  positional table of the bundle    -> encoder and decoder position_encodings (aiayn's interleaved sin/cos from
                                       position 0, not CTranslate2's default concatenated layout)
  */self_attn/{q,k,v}/weight        -> self_attention.linear[0] (fused [3D, D]); no q/k/v bias
  */cross_attn/q, {k,v}             -> attention.linear[0], linear[1] (fused [2D, D])
  */{self_attn,cross_attn}/out      -> linear[-1] with its bias
  */self_attn_norm, cross_attn_norm, ffn_norm -> the sub-layers' layer_norm (applied after the residual)
  */ffn/fc1, fc2                    -> ffn.linear_0, linear_1
Config: add_source_eos (the source ends in EOS as in training), decoder_start_token = BOS, the LayerNorm epsilon.
"""
import argparse
import json
import os
import sys


def fail(message):
    print(f"export_ctranslate2.py: error: {message}", file=sys.stderr)
    return 1


def build_spec(manifest, flat, np, transformer_spec):
    tensors = manifest["tensors"]

    def tensor(name):
        if name not in tensors:
            raise KeyError(f"the bundle has no tensor '{name}'")
        info = tensors[name]
        shape = [int(d) for d in info["shape"]]
        size = int(np.prod(shape))
        offset = int(info["offset"])
        return np.ascontiguousarray(flat[offset : offset + size].reshape(shape))

    def optional(name):
        return tensor(name) if name in tensors else None

    def set_linear(spec, prefix):
        spec.weight = tensor(prefix + "/weight")
        bias = optional(prefix + "/bias")
        if bias is not None:
            spec.bias = bias

    def set_fused(spec, prefixes):
        spec.weight = np.concatenate([tensor(p + "/weight") for p in prefixes])
        biases = [optional(p + "/bias") for p in prefixes]
        if any(b is not None for b in biases):
            spec.bias = np.concatenate(
                [b if b is not None else np.zeros(tensor(p + "/weight").shape[0], np.float32) for p, b in zip(prefixes, biases)]
            )

    def set_norm(spec, prefix):
        spec.gamma = tensor(prefix + "/weight")
        spec.beta = tensor(prefix + "/bias")

    def set_ffn(spec, prefix):
        set_norm(spec.layer_norm, prefix + "/ffn_norm")
        set_linear(spec.linear_0, prefix + "/ffn/fc1")
        set_linear(spec.linear_1, prefix + "/ffn/fc2")

    layers, heads = int(manifest["layers"]), int(manifest["heads"])
    spec = transformer_spec.TransformerSpec.from_config(layers, heads, pre_norm=False)
    embedding = tensor("embedding/weight")
    pos = manifest["positions"]
    rows, width = int(pos["shape"][0]), int(pos["shape"][1])
    positions = np.ascontiguousarray(flat[int(pos["offset"]) : int(pos["offset"]) + rows * width].reshape(rows, width))

    encoder, decoder = spec.encoder, spec.decoder
    encoder.embeddings[0].weight = embedding
    encoder.scale_embeddings = True
    encoder.position_encodings.encodings = positions
    for l, layer in enumerate(encoder.layer):
        p = f"encoder/layers/{l}"
        set_fused(layer.self_attention.linear[0], [p + "/self_attn/q", p + "/self_attn/k", p + "/self_attn/v"])
        set_linear(layer.self_attention.linear[1], p + "/self_attn/out")
        set_norm(layer.self_attention.layer_norm, p + "/self_attn_norm")
        set_ffn(layer.ffn, p)

    decoder.embeddings.weight = embedding
    decoder.scale_embeddings = True
    decoder.position_encodings.encodings = positions
    decoder.projection.weight = embedding  # the shared pre-softmax projection, no bias
    for l, layer in enumerate(decoder.layer):
        p = f"decoder/layers/{l}"
        set_fused(layer.self_attention.linear[0], [p + "/self_attn/q", p + "/self_attn/k", p + "/self_attn/v"])
        set_linear(layer.self_attention.linear[1], p + "/self_attn/out")
        set_norm(layer.self_attention.layer_norm, p + "/self_attn_norm")
        set_linear(layer.attention.linear[0], p + "/cross_attn/q")
        set_fused(layer.attention.linear[1], [p + "/cross_attn/k", p + "/cross_attn/v"])
        set_linear(layer.attention.linear[2], p + "/cross_attn/out")
        set_norm(layer.attention.layer_norm, p + "/cross_attn_norm")
        set_ffn(layer.ffn, p)

    vocab = manifest["vocabulary"]
    if len(vocab) != embedding.shape[0]:
        raise ValueError(f"the vocabulary has {len(vocab)} pieces, the embedding {embedding.shape[0]} rows")
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.config.unk_token = vocab[int(manifest["unk_id"])]
    spec.config.bos_token = vocab[int(manifest["bos_id"])]
    spec.config.eos_token = vocab[int(manifest["eos_id"])]
    spec.config.decoder_start_token = vocab[int(manifest["bos_id"])]
    spec.config.add_source_bos = False
    spec.config.add_source_eos = True
    # aiayn computes in float32: the shortest decimal of that float (1e-05), not its widened double
    spec.config.layer_norm_epsilon = float(str(np.float32(manifest["layer_norm_epsilon"])))
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="folder with manifest.json and weights.f32")
    parser.add_argument("--out", required=True, help="model folder to create (must not exist)")
    args = parser.parse_args()
    try:
        import numpy as np
        from ctranslate2.specs import transformer_spec
    except ImportError as e:
        return fail(f"{e} (pip install ctranslate2)")
    manifest_path = os.path.join(args.bundle, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        if manifest.get("format") != "aiayn-export-bundle" or manifest.get("version") != 1:
            return fail(f"{manifest_path}: not an aiayn export bundle of version 1")
        if manifest.get("pre_norm"):
            return fail(f"{manifest_path}: a pre-norm model; only post-norm models are exported")
        flat = np.fromfile(os.path.join(args.bundle, "weights.f32"), dtype="<f4")
        spec = build_spec(manifest, flat, np, transformer_spec)
        spec.validate()
        spec.optimize(quantization=manifest.get("quantization") or None)
        os.makedirs(args.out)
        spec.save(args.out)
    except Exception as e:  # one line for the user; aiayn export adds its own and removes the staging folder
        return fail(f"{type(e).__name__}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
