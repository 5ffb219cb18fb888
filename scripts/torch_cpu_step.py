# One training step of the Superhuman base network (scripts/torch_net.py) in PyTorch on the CPU,
# the reference that scripts/torch_cpu_compare sets beside `revseg bench step`:
#   python3 scripts/torch_cpu_step.py D,H,W f32|bf16 [STEPS] [THREADS]
# bf16 is torch.autocast("cpu", dtype=torch.bfloat16) around forward and loss (f32 master weights,
# gradients and Adam, as revseg's --precision bf16). One warm-up step, then STEPS timed steps
# (default 3); prints one JSON line. Peak RSS is the process's, interpreter and libraries included.
import json, resource, statistics, sys, time
import torch, torch.nn as nn
from torch_net import Net, PARAMS

d, h, w = (int(v) for v in sys.argv[1].split(","))
mode = sys.argv[2] if len(sys.argv) > 2 else "f32"
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 2
assert mode in ("f32", "bf16"), mode
# revseg runs on the machine's 2 cores (rayon's default); PyTorch gets the same number.
torch.set_num_threads(threads)
torch.manual_seed(3)
net = Net()
params = sum(p.numel() for p in net.parameters())
assert params == PARAMS, params
opt = torch.optim.Adam(net.parameters(), lr=0.01, eps=0.01)
x = torch.randn(1, 1, d, h, w)
# revseg's bench step: targets 1 with probability 0.7, mask all ones.
t = (torch.rand(1, 3, d, h, w) < 0.7).float()


def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
        z = net(x)
    # The loss in f32 either way: autocast's output is bf16, the loss reads it widened.
    loss = nn.functional.binary_cross_entropy_with_logits(z.float(), t)
    loss.backward()
    opt.step()
    return loss.item()


step()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
print(json.dumps({
    "engine": "pytorch",
    "torch": torch.__version__,
    "mode": mode,
    "patch": [d, h, w],
    "threads": torch.get_num_threads(),
    "params": params,
    "step_seconds": times,
    "median_seconds": statistics.median(times),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
