"""Shared fixtures: tiny seeded networks and a check that a model comes back unchanged."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn


class TinyVGG(nn.Module):
    """conv-relu-conv-relu-pool twice, then a small classifier: VGG's shape at toy size."""

    def __init__(self, channels: int = 4, classes: int = 5) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(2 * c * 4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def make_tiny_vgg(seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyVGG:
    """A seeded TinyVGG in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    model = TinyVGG()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model.eval().to(dtype)


TINY_ALIASES = {
    "conv1": "features.1",
    "conv2": "features.3",
    "pool1": "features.4",
    "conv3": "features.6",
    "pool2": "features.7",
}
"""Paper-style names for TinyVGG's layers, as a registered tiny model carries them."""


def register_tiny_model(name: str, *, channel_order: str = "RGB", labels: bool = True) -> None:
    """Register a seeded TinyVGG under ``name`` (32 px input, :data:`TINY_ALIASES`), replacing an earlier one."""
    import deconvviz as dv

    dv.register_model(
        dv.ModelSpec(
            name=name,
            builder=make_tiny_vgg,
            preprocessing=dv.Preprocessing(size=32, channel_order=channel_order),
            aliases=TINY_ALIASES,
            labels=[f"class {i}" for i in range(5)] if labels else None,
            description="a tiny seeded VGG-shaped net",
        ),
        replace=True,
    )


@pytest.fixture(scope="session")
def tiny_vgg() -> TinyVGG:
    return make_tiny_vgg()


@pytest.fixture
def image_16() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@dataclass
class ModelState:
    """Everything about a model that deconvviz promises to leave as it found it."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    inplace: dict[str, bool]
    hooks: dict[str, tuple[int, int, int, int]]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        return cls(
            params={k: v.detach().clone() for k, v in model.named_parameters()},
            buffers={k: v.detach().clone() for k, v in model.named_buffers()},
            training={k: m.training for k, m in model.named_modules()},
            requires_grad={k: v.requires_grad for k, v in model.named_parameters()},
            inplace={k: bool(getattr(m, "inplace", False)) for k, m in model.named_modules()},
            hooks={
                k: (
                    len(m._forward_hooks),
                    len(m._forward_pre_hooks),
                    len(m._backward_hooks),
                    len(getattr(m, "_backward_pre_hooks", {})),
                )
                for k, m in model.named_modules()
            },
        )

    def assert_same(self, model: nn.Module) -> None:
        now = ModelState.of(model)
        assert now.training == self.training, "training flags changed"
        assert now.requires_grad == self.requires_grad, "requires_grad changed"
        assert now.inplace == self.inplace, "in-place flags changed"
        assert now.hooks == self.hooks, "hooks left behind"
        for k, v in self.params.items():
            assert torch.equal(now.params[k], v), f"parameter {k} changed"
        for k, v in self.buffers.items():
            assert torch.equal(now.buffers[k], v), f"buffer {k} changed"


@pytest.fixture
def unchanged() -> Callable[[nn.Module], ModelState]:
    """``state = unchanged(model)`` ... ``state.assert_same(model)``."""
    return ModelState.of


def deepcopy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def chromium(profile: Path, *, window: str = "1280,900", extra: Sequence[str] = (), logs: bool = False) -> Any:
    """Debian's headless chromium driven by selenium, with its profile in ``profile``; the caller quits it.

    Skips the test where selenium, chromium or chromedriver is missing (``.ci/run`` installs them). ``logs``
    keeps the page's console and network log (``driver.get_log("browser" / "performance")``).
    """
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        *extra,
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={window}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt-style block: a depthwise convolution, then LayerNorm and a Linear over (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Linear(8, 8)
        self.act = nn.GELU()
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.act(self.mlp(self.norm(y)))
        x = x + torch.permute(y, [0, 3, 1, 2])
        return self.head(self.pool(x)).flatten(1)
