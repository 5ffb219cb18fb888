# An independent reference for the demo's learning problem: trains the demo's base network
# (Superhuman layout, widths 12,16,24, residual modules, BatchNorm, ELU) in PyTorch on the volumes
# `revseg demo --out DIR` wrote, with its own patch sampling, flips, targets and class-rebalanced
# loss, then predicts the unseen test volume into OUT/test_affinities.h5:/affinities (and copies
# the labels), so that `cargo run --release --example segment_sweep -- OUT` scores it with
# revseg's pipeline. What it answers: is the demo's quality limited by revseg's training or by
# the network, steps and data.
#
#   python3 scripts/torch_demo_train.py DEMO_DIR OUT [--steps N] [--widths 12,16,24] [--threads 2]
import argparse, os, shutil, sys, time
import h5py, numpy as np, torch, torch.nn as nn
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_net import Net

p = argparse.ArgumentParser()
p.add_argument("demo"); p.add_argument("out")
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--widths", default="12,16,24")
p.add_argument("--patch", default="8,64,64")
p.add_argument("--lr", type=float, default=0.005)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()
torch.set_num_threads(a.threads); torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed)
W = [int(w) for w in a.widths.split(",")]; PZ, PY, PX = (int(v) for v in a.patch.split(","))

img = h5py.File(os.path.join(a.demo, "train.h5"))["image"][:].astype(np.float32) / 255.0
lab = h5py.File(os.path.join(a.demo, "train_labels.h5"))["labels"][:].astype(np.int64)
Z = img.shape[0]; ztr = Z - Z // 4  # the last quarter of sections held out, as revseg does

def targets(l):
    # (3, Z, Y, X): 1 where the voxel and its -z / -y / -x neighbour share a non-zero label.
    t = np.zeros((3,) + l.shape, np.float32); m = np.zeros_like(t)
    t[0, 1:] = (l[1:] == l[:-1]) & (l[1:] > 0); m[0, 1:] = 1
    t[1, :, 1:] = (l[:, 1:] == l[:, :-1]) & (l[:, 1:] > 0); m[1, :, 1:] = 1
    t[2, :, :, 1:] = (l[:, :, 1:] == l[:, :, :-1]) & (l[:, :, 1:] > 0); m[2, :, :, 1:] = 1
    return t, m

def sample(z0, z1):
    z = rng.integers(z0, z1 - PZ + 1); y = rng.integers(0, img.shape[1] - PY + 1); x = rng.integers(0, img.shape[2] - PX + 1)
    i = img[z:z + PZ, y:y + PY, x:x + PX]; l = lab[z:z + PZ, y:y + PY, x:x + PX]
    if rng.random() < 0.5: i, l = i[::-1], l[::-1]
    if rng.random() < 0.5: i, l = i[:, ::-1], l[:, ::-1]
    if rng.random() < 0.5: i, l = i[:, :, ::-1], l[:, :, ::-1]
    if rng.random() < 0.5: i, l = i.transpose(0, 2, 1), l.transpose(0, 2, 1)
    t, m = targets(np.ascontiguousarray(l))
    return np.ascontiguousarray(i), t, m

def loss_fn(logit, t, m):
    # Class rebalancing per channel: positives and negatives weigh half the loss each.
    w = torch.zeros_like(t)
    for c in range(3):
        pos = (t[c] * m[c]).sum(); neg = ((1 - t[c]) * m[c]).sum(); n = pos + neg
        if pos > 0 and neg > 0: w[c] = m[c] * (t[c] * neg / n + (1 - t[c]) * pos / n)
        else: w[c] = m[c] * 0.5
    return (nn.functional.binary_cross_entropy_with_logits(logit, t, reduction="none") * w).sum() / m.sum()

net = Net(outputs=3, widths=W, momentum=0.05); opt = torch.optim.Adam(net.parameters(), lr=a.lr, eps=1e-8)
t0 = time.time()
for step in range(1, a.steps + 1):
    i, t, m = sample(0, ztr)
    out = net(torch.from_numpy(i)[None, None])[0]
    loss = loss_fn(out, torch.from_numpy(t), torch.from_numpy(m))
    opt.zero_grad(); loss.backward(); opt.step()
    if step % max(1, a.steps // 10) == 0:
        net.eval()
        with torch.no_grad():
            vi = img[ztr:]; vt, vm = targets(lab[ztr:])
            vo = torch.sigmoid(net(torch.from_numpy(vi)[None, None])[0]).numpy()
            acc = (((vo >= 0.5) == (vt >= 0.5)) * vm).sum() / vm.sum()
        net.train()
        print(f"step {step} loss {loss.item():.4f} val boundary accuracy {acc:.4f} {time.time() - t0:.0f} s", flush=True)

os.makedirs(a.out, exist_ok=True)
net.eval()
with torch.no_grad():
    ti = h5py.File(os.path.join(a.demo, "test.h5"))["image"][:].astype(np.float32) / 255.0
    aff = torch.sigmoid(net(torch.from_numpy(ti)[None, None])[0]).numpy()
with h5py.File(os.path.join(a.out, "test_affinities.h5"), "w") as f: f["affinities"] = aff
shutil.copy(os.path.join(a.demo, "test_labels.h5"), os.path.join(a.out, "test_labels.h5"))
print(f"trained {a.steps} steps in {time.time() - t0:.0f} s; wrote {a.out}/test_affinities.h5")
