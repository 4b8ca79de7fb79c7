"""CUDA graphs for the network: each network call replayed from a captured graph instead of launched kernel by kernel.

Small networks at batch 1 leave a GPU waiting for Python to queue their kernels (`bench speed` on an H100: 1.07-1.32
engine overhead for the built-in network at 64 px; assets/bench/speed/README.md). A captured graph launches a whole
forward pass at once.
`GraphedForward` captures one graph per input (shape, dtype, strides, device), with static input buffers that each
call copies into and a static output that it copies out (PyTorch's "whole network capture" recipe,
`torch.cuda.graphs`). Only forward passes without autograd on CUDA tensors are graphed; anything else (CPU tensors,
DPS's forward + backward) runs the network eagerly, so the CPU path is unchanged.

Unmeasured: no GPU was available when this was written; `posterior-diffusion bench speed --compile cuda_graphs`
measures it on a device.
"""

from __future__ import annotations

import torch


class GraphedForward:
    """net(x, t).sample, replayed from CUDA graphs where it can be (see the module docstring).

    net: a diffusers UNet2DModel (or a module with the same call); x (B, C, H, W), t (B,) long, on one device."""

    WARMUP_CALLS = 3  # eager calls on a side stream before capture (cuDNN autotuning, lazy initialisation)

    def __init__(self, net):
        self.net = net
        self.graphs: dict[tuple, tuple] = {}  # key -> (static x, static t, graph, static output)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or torch.is_grad_enabled():
            return self.net(x, t).sample
        key = (tuple(x.shape), x.dtype, x.stride(), x.device)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t)
        static_x, static_t, graph, static_out = self.graphs[key]
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor, t: torch.Tensor) -> tuple:
        static_x, static_t = x.clone(), t.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_CALLS):
                self.net(static_x, static_t)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.net(static_x, static_t).sample
        return static_x, static_t, graph, static_out
