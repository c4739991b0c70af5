"""Small hand-made networks that cover the graph patterns DFQ must handle."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SameConv2d(nn.Conv2d):
    """A Conv2d subclass with its own forward ('same' padding), as models often have."""

    def forward(self, x):
        pad = (self.kernel_size[0] - 1) // 2
        return F.conv2d(F.pad(x, (pad,) * 4), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(cin, cout, k=3, groups=1, bias=False, conv=nn.Conv2d):
    padding = 0 if conv is SameConv2d else k // 2
    return nn.Sequential(conv(cin, cout, k, padding=padding, groups=groups, bias=bias), nn.BatchNorm2d(cout))


class Zoo(nn.Module):
    """Depthwise chain, grouped conv, residual add, fan-out, concat, pooling,
    leaky ReLU, ReLU6, a Conv2d subclass, convs with and without bias."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16, bias=True)
        self.dw = conv_bn(16, 16, groups=16)
        self.pw = conv_bn(16, 24, k=1)
        self.grouped = conv_bn(24, 24, groups=4, bias=True)
        self.res_a = conv_bn(24, 24)
        self.res_b = conv_bn(24, 24, conv=SameConv2d)
        self.left = conv_bn(24, 8, k=1)
        self.right = conv_bn(24, 8, k=1, bias=True)
        self.merge = conv_bn(16, 32, k=1)
        self.six = conv_bn(32, 32, groups=32)
        self.last = conv_bn(32, 32, k=1)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = torch.relu(self.dw(x))
        x = self.pw(x).relu()
        x = F.leaky_relu(self.grouped(x), 0.1)
        x = F.max_pool2d(x, 2)
        y = F.relu(self.res_b(F.relu(self.res_a(x))))
        x = F.relu(x + y)                                   # residual add
        x = torch.cat([F.relu(self.left(x)), F.relu(self.right(x))], 1)  # fan-out, concat
        x = F.relu6(self.merge(x))
        x = F.hardtanh(self.six(x), 0.0, 6.0)
        x = F.adaptive_avg_pool2d(F.relu(self.last(x)), 4)
        return self.fc(torch.flatten(x, 1))


class MLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(3 * 32 * 32, 64), nn.BatchNorm1d(64)
        self.fc2, self.bn2 = nn.Linear(64, 48, bias=False), nn.BatchNorm1d(48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.fc1(x.flatten(1))))
        x = nn.functional.dropout(F.relu(self.bn2(self.fc2(x))), 0.5, training=False)
        return self.fc3(x)


class ConvBNReLUConv(nn.Module):
    """Two conv layers with a ReLU between: the unit of CLE, absorption and
    bias correction tests."""

    def __init__(self, cin=8, mid=16, cout=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 3, padding=1), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
