"""Reads a run's TensorBoard folder with TensorBoard's own event reader and prints every scalar and text
summary as JSON: {"scalars": {tag: [[step, value], ...]}, "texts": {tag: [[step, text], ...]}}.
An independent check of RUN/tensorboard (tests/integration/watch_test.cpp)."""
import json
import sys

from tensorboard.backend.event_processing import event_accumulator as ea


def main(logdir):
    # size_guidance 0: keep every event (the default samples scalars down to 10,000).
    acc = ea.EventAccumulator(logdir, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "texts": {}}
    for tag in tags["scalars"]:
        out["scalars"][tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
    for tag in tags["tensors"]:
        out["texts"][tag] = [[e.step, b"".join(e.tensor_proto.string_val).decode()] for e in acc.Tensors(tag)]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
