#!/usr/bin/env python3
# onnxruntime side of scripts/train-bench.sh: times the training-step graphs fedge exported. The export already
# writes the convolutions and dense layers as standard Conv/ConvTranspose/Gemm (TrainStep::into_standard_ops) instead
# of fedge's FedgeConv/FedgeConvInputGrad/FedgeConvWeightGrad/FedgeGemm; FedgeMaxPoolGrad, fedge's other tract op,
# is rewritten here into standard ScatterElements (adding, as it does: an embedding's gradient scatters a repeated
# token's rows onto one row) so that onnxruntime can run it. Any other ai.fedge op left in a graph is an error.
# Token-id models (the char-LSTM) are fed random ids below their vocabulary and one-hot labels.
import sys, time, numpy as np, onnx, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto

def standardise(m):
    """Replace FedgeMaxPoolGrad by ONNX-standard ops (ORT's MaxPool indices are global flat positions).
    It adds dy at each index: ScatterElements with reduction="add", opset 16."""
    g = m.graph
    new = []
    for n in g.node:
        if n.op_type == "FedgeMaxPoolGrad":
            shape = list(helper.get_attribute_value(n.attribute[0]))
            total = int(np.prod(shape))
            idx, dy = n.input
            o = n.output[0]
            z = o + "_zeros"; fi = o + "_fi"; fd = o + "_fd"; sf = o + "_sf"; s1 = o + "_s1"; flat = o + "_flat"
            g.initializer.extend([numpy_helper.from_array(np.zeros(total, np.float32), z),
                                  numpy_helper.from_array(np.array([-1], np.int64), s1),
                                  numpy_helper.from_array(np.array(shape, np.int64), sf)])
            new += [helper.make_node("Reshape", [idx, s1], [fi]), helper.make_node("Reshape", [dy, s1], [fd]),
                    helper.make_node("ScatterElements", [z, fi, fd], [flat], axis=0, reduction="add"),
                    helper.make_node("Reshape", [flat, sf], [o])]
        elif n.domain == "ai.fedge":
            sys.exit(f"{n.op_type}: an ai.fedge operator onnxruntime cannot run")
        else:
            new.append(n)
    del g.node[:]
    g.node.extend(new)
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx")]
    for o in keep:
        o.version = max(o.version, 16)  # ScatterElements' reduction
    del m.opset_import[:]
    m.opset_import.extend(keep)
    return m

def bench(path, runs, vocab=None):
    """CPU ms per step. `vocab`: the data input (the first) holds token ids below it, in the input's own type
    (fedge's step reads them as floats; an int64 input gets int64), and the labels (the second) are one-hot rows."""
    m = standardise(onnx.load(path))
    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {}
    rng = np.random.default_rng(1)
    for k, i in enumerate(s.get_inputs()):
        shape = [d for d in i.shape]
        if vocab is not None and k == 0:
            dtype = np.int64 if i.type == "tensor(int64)" else np.float32
            feeds[i.name] = rng.integers(0, vocab, size=shape).astype(dtype)
        elif vocab is not None and k == 1:
            feeds[i.name] = np.eye(shape[1], dtype=np.float32)[rng.integers(0, min(vocab, shape[1]), size=shape[0])]
        else:
            feeds[i.name] = np.random.rand(*shape).astype(np.float32) * 0.1
    for _ in range(2): s.run(None, feeds)
    t = time.process_time()
    for _ in range(runs): s.run(None, feeds)
    return (time.process_time() - t) * 1e3 / runs

d = sys.argv[1]
for b in (32, 128):
    print(f"ORT mlp batch {b}: {bench(f'{d}/mlp_train_{b}.onnx', 50):8.2f} ms/step CPU")
    print(f"ORT cnn batch {b}: {bench(f'{d}/cnn_train_{b}.onnx', 5):8.2f} ms/step CPU")
    print(f"ORT lstm batch {b}: {bench(f'{d}/lstm_train_{b}.onnx', 10, vocab=256):8.2f} ms/step CPU")
    print(f"ORT gru batch {b}: {bench(f'{d}/gru_train_{b}.onnx', 10, vocab=256):8.2f} ms/step CPU")
