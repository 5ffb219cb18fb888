# The Superhuman base network (revseg's NetConfig::superhuman(0): residual modules, BatchNorm, ELU,
# 1510443 parameters) in PyTorch, the one definition that scripts/torch_step.py (CUDA),
# scripts/torch_cpu_step.py (CPU) and, at the demo's widths, scripts/torch_demo_train.py use.
import torch.nn as nn
PARAMS = 1510443
W = [28, 36, 48, 64, 80]
def bn_elu(c, momentum): return nn.Sequential(nn.BatchNorm3d(c, momentum=momentum), nn.ELU())
class ResMod(nn.Module):
    def __init__(s, ci, c, momentum):
        super().__init__()
        s.conv1 = nn.Conv3d(ci, c, (1, 3, 3), padding=(0, 1, 1), bias=False); s.bn1 = bn_elu(c, momentum)
        s.conv2 = nn.Conv3d(c, c, 3, padding=1, bias=False); s.bn2 = bn_elu(c, momentum)
        s.conv3 = nn.Conv3d(c, c, 3, padding=1, bias=False); s.bn3 = bn_elu(c, momentum)
    def forward(s, x):
        a = s.bn1(s.conv1(x))
        return s.bn3(s.conv3(s.bn2(s.conv2(a))) + a)
class Net(nn.Module):
    def __init__(s, outputs=3, widths=W, momentum=0.001):
        super().__init__()
        s.widths = w = list(widths)
        s.embed_in = nn.Conv3d(1, w[0], (1, 5, 5), padding=(0, 2, 2))
        s.enc = nn.ModuleList([ResMod(w[max(i - 1, 0)], c, momentum) for i, c in enumerate(w)])
        s.pool = nn.MaxPool3d((1, 2, 2))
        s.up = nn.ModuleList([nn.ConvTranspose3d(w[i + 1], w[i], (1, 2, 2), (1, 2, 2)) for i in range(len(w) - 1)])
        s.dbn = nn.ModuleList([bn_elu(w[i], momentum) for i in range(len(w) - 1)])
        s.dec = nn.ModuleList([ResMod(w[i], w[i], momentum) for i in range(len(w) - 1)])
        s.embed_out = nn.Conv3d(w[0], w[0], (1, 5, 5), padding=(0, 2, 2))
        s.out = nn.Conv3d(w[0], outputs, 1)
    def forward(s, x):
        x = nn.functional.elu(s.embed_in(x)); skips = []
        for i, m in enumerate(s.enc):
            if i > 0: x = s.pool(x)
            x = m(x); skips.append(x)
        for i in reversed(range(len(s.widths) - 1)):
            x = s.dec[i](s.dbn[i](s.up[i](x) + skips[i]))
        return s.out(nn.functional.elu(s.embed_out(x)))
