# The Superhuman base network (scripts/torch_net.py: revseg's NetConfig::superhuman(0), BatchNorm)
# in PyTorch, timed with CUDA events, peak from max_memory_allocated. scripts/gpu-check runs it twice:
#   python3 scripts/torch_step.py D,H,W fp32   strict fp32 (TF32 off everywhere)
#   python3 scripts/torch_step.py D,H,W tf32   PyTorch's default: TF32 in cuDNN convolutions
import sys, torch, torch.nn as nn
d, h, w = (int(v) for v in sys.argv[1].split(","))
mode = sys.argv[2] if len(sys.argv) > 2 else "fp32"
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = mode == "tf32"
torch.backends.cuda.matmul.allow_tf32 = False
from torch_net import Net
dev = torch.device("cuda")
net = Net().to(dev)
print("params", sum(p.numel() for p in net.parameters()), "(revseg base network: 1510443)")
opt = torch.optim.Adam(net.parameters(), lr=0.01, eps=0.01)
x = torch.randn(1, 1, d, h, w, device=dev)
t = (torch.rand(1, 3, d, h, w, device=dev) < 0.6).float()
m = (torch.rand(1, 3, d, h, w, device=dev) < 0.9).float()
def step():
    opt.zero_grad(set_to_none=True)
    z = net(x)
    loss = (nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none") * m).sum() / m.sum()
    loss.backward(); opt.step()
for _ in range(3): step()
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
times = []
for _ in range(10):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record(); step(); end.record(); torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1000)
times.sort()
print(f"pytorch {torch.__version__} cudnn {torch.backends.cudnn.version()} {torch.cuda.get_device_name()}")
print(f"{mode} patch {d}x{h}x{w}: median step {1000 * times[len(times) // 2]:.1f} ms, min {1000 * times[0]:.1f} ms, "
      f"peak allocated {torch.cuda.max_memory_allocated() >> 20} MiB")
