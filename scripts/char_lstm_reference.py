#!/usr/bin/env python3
"""PyTorch's side of the next-character benchmark (scripts/bench-char-lstm.sh), on one thread.

    char_lstm_reference.py DATA_DIR OUT_ONNX --window 80 --stride 3 --batch 32 --lr 0.002 --hidden 128 --embed 32

Reads DATA_DIR/train.txt and test.txt as fedge's text source does (bytes; windows of `window` bytes starting every
`stride` bytes, each labelled with the byte after it), builds Embedding(256, embed) -> LSTM(embed, hidden,
batch_first) -> Linear(hidden, 256) on the last step, exports it to OUT_ONNX before any training (the model fedge
then trains from the same weights), trains one epoch with Adam and prints one JSON line: test accuracy, mean step
time and steps.
"""
import argparse
import json
import os
import time

import torch
import torch.nn as nn

p = argparse.ArgumentParser()
p.add_argument("data")
p.add_argument("onnx")
p.add_argument("--window", type=int, default=80)
p.add_argument("--stride", type=int, default=3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, default=0.002)
p.add_argument("--hidden", type=int, default=128)
p.add_argument("--embed", type=int, default=32)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed)


def windows(path):
    data = torch.tensor(list(open(path, "rb").read()), dtype=torch.int64)
    starts = torch.arange(0, len(data) - a.window, a.stride)
    x = torch.stack([data[s : s + a.window] for s in starts.tolist()])
    y = data[starts + a.window]
    return x, y


class CharLstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(256, a.embed)
        self.lstm = nn.LSTM(a.embed, a.hidden, batch_first=True)
        self.head = nn.Linear(a.hidden, 256)

    def forward(self, x):
        y, _ = self.lstm(self.embedding(x))
        return self.head(y[:, -1])


xtr, ytr = windows(os.path.join(a.data, "train.txt"))
xte, yte = windows(os.path.join(a.data, "test.txt"))
model = CharLstm()
torch.onnx.export(
    model,
    xtr[:1],
    a.onnx,
    input_names=["tokens"],
    output_names=["logits"],
    dynamic_axes={"tokens": {0: "N"}, "logits": {0: "N"}},
    opset_version=14,
    do_constant_folding=False,
)
opt = torch.optim.Adam(model.parameters(), lr=a.lr)
order = torch.randperm(len(xtr))
times = []
for i in range(0, len(order), a.batch):
    idx = order[i : i + a.batch]
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
with torch.no_grad():
    correct = sum((model(xte[i : i + 256]).argmax(1) == yte[i : i + 256]).sum().item() for i in range(0, len(xte), 256))
steady = sorted(times)[len(times) // 10 : -len(times) // 10 or None]
print(
    json.dumps(
        {
            "torch": torch.__version__,
            "train_examples": len(xtr),
            "test_examples": len(xte),
            "steps": len(times),
            "step_ms": 1000 * sum(steady) / max(len(steady), 1),
            "train_seconds": sum(times),
            "test_accuracy": correct / len(xte),
        }
    )
)
