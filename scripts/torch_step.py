# The Superhuman base network (revseg's NetConfig::superhuman(0), BatchNorm) in PyTorch, timed with
# CUDA events, peak from max_memory_allocated. scripts/gpu-check runs it twice:
#   python3 scripts/torch_step.py D,H,W fp32   strict fp32 (TF32 off everywhere)
#   python3 scripts/torch_step.py D,H,W tf32   PyTorch's default: TF32 in cuDNN convolutions
import sys, torch, torch.nn as nn
d, h, w = (int(v) for v in sys.argv[1].split(","))
mode = sys.argv[2] if len(sys.argv) > 2 else "fp32"
torch.backends.cudnn.benchmark = True
torch.backends.cudnn.allow_tf32 = mode == "tf32"
torch.backends.cuda.matmul.allow_tf32 = False
W = [28, 36, 48, 64, 80]
def bn_elu(c): return nn.Sequential(nn.BatchNorm3d(c, momentum=0.001), nn.ELU())
class ResMod(nn.Module):
    def __init__(s, ci, c):
        super().__init__()
        s.conv1 = nn.Conv3d(ci, c, (1, 3, 3), padding=(0, 1, 1), bias=False); s.bn1 = bn_elu(c)
        s.conv2 = nn.Conv3d(c, c, 3, padding=1, bias=False); s.bn2 = bn_elu(c)
        s.conv3 = nn.Conv3d(c, c, 3, padding=1, bias=False); s.bn3 = bn_elu(c)
    def forward(s, x):
        a = s.bn1(s.conv1(x))
        return s.bn3(s.conv3(s.bn2(s.conv2(a))) + a)
class Net(nn.Module):
    def __init__(s, outputs=3):
        super().__init__()
        s.embed_in = nn.Conv3d(1, W[0], (1, 5, 5), padding=(0, 2, 2))
        s.enc = nn.ModuleList([ResMod(W[max(i - 1, 0)], c) for i, c in enumerate(W)])
        s.pool = nn.MaxPool3d((1, 2, 2))
        s.up = nn.ModuleList([nn.ConvTranspose3d(W[i + 1], W[i], (1, 2, 2), (1, 2, 2)) for i in range(len(W) - 1)])
        s.dbn = nn.ModuleList([bn_elu(W[i]) for i in range(len(W) - 1)])
        s.dec = nn.ModuleList([ResMod(W[i], W[i]) for i in range(len(W) - 1)])
        s.embed_out = nn.Conv3d(W[0], W[0], (1, 5, 5), padding=(0, 2, 2))
        s.out = nn.Conv3d(W[0], outputs, 1)
    def forward(s, x):
        x = nn.functional.elu(s.embed_in(x)); skips = []
        for i, m in enumerate(s.enc):
            if i > 0: x = s.pool(x)
            x = m(x); skips.append(x)
        for i in reversed(range(len(W) - 1)):
            x = s.dec[i](s.dbn[i](s.up[i](x) + skips[i]))
        return s.out(nn.functional.elu(s.embed_out(x)))
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
