"""GMR convolution layers: ``GMRConv3d`` and ``GMRConv2d``.

Each kernel is a learned mix of a few radially symmetric rings (see
``gmrseg.layers.rings``), so a layer with stride 1 and symmetric padding commutes
exactly with the 48 rotations and reflections of the cube (8 of the square in 2D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from gmrseg.layers import functional as G
from gmrseg.layers.rings import (
    RING_PROFILES,
    binned_rings,
    default_num_rings,
    gaussian_rings,
    initial_sigmas,
    kernel_distances,
    quartic_correction,
    reference_bins,
    ring_centres,
    ring_window,
    sigma_bounds,
)
from gmrseg.layers.strategy import STRATEGIES, choose_strategy

__all__ = ["GMRConv2d", "GMRConv3d"]

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_LOW_PRECISION = (torch.float16, torch.bfloat16)

# Spectral caches keep the ring spectra of this many input shapes per layer in eval mode
# (sliding-window inference uses one or two shapes).
_MAX_CACHED_SHAPES = 4


def _single_int(value, name: str, minimum: int) -> int:
    """Return ``value`` as an int, accepting a tuple of equal ints as ``nn.Conv3d`` does."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = set(value)
        if len(values) != 1:
            raise ValueError(f"{name} must be the same along every axis for a GMR kernel, got {tuple(value)!r}")
        value = next(iter(values))
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """Return the autocast dtype active for ``device_type``, or None when autocast is off."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class _GMRConvNd(nn.Module):
    """Shared implementation of the 2D and 3D GMR convolutions."""

    spatial_dims: int = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | str = "same",
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_rings: int | None = None,
        ring_profile: str = "gaussian",
        strategy: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}

        # Validate every argument before building anything.
        in_channels = _single_int(in_channels, "in_channels", 1)
        out_channels = _single_int(out_channels, "out_channels", 1)
        kernel_size = _single_int(kernel_size, "kernel_size", 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so the rings have a centre voxel, got {kernel_size}")
        stride = _single_int(stride, "stride", 1)
        dilation = _single_int(dilation, "dilation", 1)
        groups = _single_int(groups, "groups", 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})"
            )
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int >= 0, 'same' or 'valid', got {padding!r}")
            padding_text = padding
            padding = dilation * (kernel_size // 2) if padding == "same" else 0
        else:
            padding = _single_int(padding, "padding", 0)
            padding_text = padding
        if num_rings is None:
            num_rings = default_num_rings(kernel_size)
        num_rings = _single_int(num_rings, "num_rings", 1)
        if num_rings > kernel_size:
            raise ValueError(f"num_rings must be at most kernel_size ({kernel_size}), got {num_rings}")
        if ring_profile not in RING_PROFILES:
            raise ValueError(f"ring_profile must be one of {RING_PROFILES}, got {ring_profile!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self._padding_text = padding_text
        self.dilation = dilation
        self.groups = groups
        self.padding_mode = padding_mode
        self.num_rings = num_rings
        self.ring_profile = ring_profile
        self.strategy = strategy

        # Learned parameters: ring weights, ring widths (log), bias.
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, num_rings, **factory))
        self.log_sigma = nn.Parameter(torch.empty(num_rings, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None

        # Fixed geometry of the rings; not saved in the state dict because it follows from the arguments.
        self.register_buffer("ring_centres", ring_centres(kernel_size, num_rings, **factory), persistent=False)
        distances = kernel_distances(kernel_size, self.spatial_dims, **factory)
        self.register_buffer("distances", distances, persistent=False)
        if ring_profile == "gaussian":
            self.register_buffer("window", ring_window(distances, kernel_size), persistent=False)
            exact = kernel_distances(kernel_size, self.spatial_dims, dtype=torch.float64)
            quartic = quartic_correction(exact, ring_window(exact, kernel_size))
            self.register_buffer("quartic", quartic.to(distances), persistent=False)
        else:
            bins = reference_bins(kernel_size, num_rings, self.spatial_dims, **factory)
            self.register_buffer("bins", bins, persistent=False)

        self._cache: dict = {}
        self.reset_parameters()

    # ----------------------------------------------------------------- parameters

    def reset_parameters(self) -> None:
        """Initialise the ring widths, then ``weight`` and ``bias`` like ``nn.Conv3d`` would be.

        ``nn.Conv3d`` draws each kernel voxel from ``U(-b, b)`` with ``b = 1 / sqrt(C_in / groups * k^3)``,
        which gives each kernel an expected energy of ``1 / (3 C_in / groups)``. Here ring ``l``'s
        weights are drawn from ``U(-b_l, b_l)`` with ``b_l = 1 / (sqrt(C_in / groups * n) * |R_l|)``, which
        gives the same expected energy (up to the overlap of neighbouring rings).
        """
        with torch.no_grad():
            self.log_sigma.fill_(math.log(initial_sigmas(self.ring_profile, self.kernel_size, self.num_rings)))
            ring_norms = self.rings().flatten(1).norm(dim=1).clamp_min(1e-12)
        fan_in = self.weight.shape[1] * self.num_rings
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0).mul_((bound / ring_norms).to(self.weight.dtype))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self._cache.clear()

    def sigmas(self) -> torch.Tensor:
        """Return the ring widths, clamped to ``rings.sigma_bounds`` (voxels, or shell indices when binned)."""
        low, high = sigma_bounds(self.ring_profile, self.kernel_size, self.num_rings)
        return self.log_sigma.exp().clamp(low, high)

    def rings(self) -> torch.Tensor:
        """Return the ring basis, shape ``(num_rings, k, ..., k)``."""
        if self.ring_profile == "binned":
            return binned_rings(self.bins, self.sigmas())
        return gaussian_rings(self.distances, self.ring_centres, self.sigmas(), self.window, self.quartic)

    def kernel(self) -> torch.Tensor:
        """Return the dense kernel, shape ``(C_out, C_in / groups, k, ..., k)``."""
        rings = self.rings()
        return torch.matmul(self.weight, rings.flatten(1)).view(*self.weight.shape[:2], *rings.shape[1:])

    # ----------------------------------------------------------------- eval cache

    def _cache_allowed(self) -> bool:
        # The cache contains tensors built without autograd, so it only serves calls that need
        # no gradient for the parameters. Traced or compiled graphs build the kernel themselves.
        if self.training or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return False
        needs_graph = torch.is_grad_enabled() and (self.weight.requires_grad or self.log_sigma.requires_grad)
        return not needs_graph

    def _parameter_key(self) -> tuple:
        # An optimizer step or load_state_dict bumps _version; .to(), .double() and
        # parameter swaps change data_ptr, dtype or device.
        key = []
        for tensor in (self.weight, self.log_sigma):
            key.append((tensor._version, tensor.data_ptr(), tensor.dtype, tensor.device))
        return tuple(key)

    def _cached(self, name: str, build, *extra):
        if not self._cache_allowed():
            return build()
        key = (self._parameter_key(),) + extra
        entry = self._cache.get((name,) + extra)
        if entry is not None and entry[0] == key:
            return entry[1]
        with torch.no_grad():
            value = build()
        if name == "spectra":
            stale = [slot for slot in self._cache if slot[0] == "spectra"]
            for slot in stale[: max(len(stale) - _MAX_CACHED_SHAPES + 1, 0)]:
                del self._cache[slot]
        self._cache[(name,) + extra] = (key, value)
        return value

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() and friends: never keep tensors of the old device or dtype.
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    # ----------------------------------------------------------------- forward

    def resolve_strategy(
        self, input_shape: Sequence[int], device: torch.device | None = None, training: bool | None = None
    ) -> str:
        """Return the strategy ``forward`` uses for an input of ``input_shape`` (``B, C, *spatial``, padded).

        ``training`` (default: ``self.training`` with gradients enabled) selects the cost
        of a forward+backward pass instead of a forward pass.
        """
        if self.strategy != "auto":
            return self.strategy
        device = device if device is not None else self.weight.device
        return choose_strategy(
            input_shape,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            num_rings=self.num_rings,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            device_type=torch.device(device).type,
            training=(self.training and torch.is_grad_enabled()) if training is None else training,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` of shape ``(B, C_in, *spatial)`` (or unbatched ``(C_in, *spatial)``)."""
        unbatched = x.dim() == self.spatial_dims + 1
        if unbatched:
            x = x.unsqueeze(0)
        self._check_input(x)

        x, zero_padding = G.pad_input(x, self.padding, self.padding_mode, self.spatial_dims)
        strategy = self.resolve_strategy(x.shape, x.device)
        if strategy == "dense":
            kernel = self._cached("kernel", self.kernel)
            out = G.dense_conv(x, kernel, self.bias, self.stride, zero_padding, self.dilation, self.groups)
        elif strategy == "rings":
            rings = self._cached("rings", self.rings)
            out = G.ring_conv(x, rings, self.weight, self.bias, self.stride, zero_padding, self.dilation, self.groups)
        else:
            out = self._spectral_forward(x, zero_padding)
        return out.squeeze(0) if unbatched else out

    def _spectral_forward(self, x: torch.Tensor, zero_padding: int) -> torch.Tensor:
        # FFTs have no half-precision CPU kernels, so low-precision inputs and autocast
        # regions run the spectral path in float32 and return the dtype the caller expects.
        autocast_dtype = _autocast_dtype(x.device.type)
        out_dtype = autocast_dtype or x.dtype
        compute_dtype = torch.float32 if (autocast_dtype or x.dtype in _LOW_PRECISION) else x.dtype
        shape = G.fft_shape(tuple(int(size) for size in x.shape[2:]), zero_padding, self.dilation * (self.kernel_size // 2))

        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight.to(compute_dtype)
            bias = None if self.bias is None else self.bias.to(compute_dtype)

            def build_spectra():
                return G.ring_spectra(self.rings().to(compute_dtype), shape, self.dilation)

            responses = self._cached("spectra", build_spectra, shape, compute_dtype)
            out = G.spectral_conv(
                x.to(compute_dtype),
                responses,
                weight,
                bias,
                self.kernel_size,
                self.stride,
                zero_padding,
                self.dilation,
                self.groups,
                shape,
            )
        return out.to(out_dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        name = type(self).__name__
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{name} expects input of shape (B, C, {', '.join('XYZ'[: self.spatial_dims])}) "
                f"or without the batch axis, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name} expects {self.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        reach = self.dilation * (self.kernel_size // 2)
        for size in x.shape[2:]:
            size = int(size)
            if size + 2 * self.padding - 2 * reach < 1:
                raise ValueError(
                    f"{name}: spatial size {size} is too small for kernel_size={self.kernel_size}, "
                    f"dilation={self.dilation} and padding={self.padding} (input shape {tuple(x.shape)})"
                )

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != 1:
            text += f", stride={self.stride}"
        text += f", padding={self._padding_text!r}" if isinstance(self._padding_text, str) else f", padding={self.padding}"
        if self.dilation != 1:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        text += f", num_rings={self.num_rings}, ring_profile={self.ring_profile!r}, strategy={self.strategy!r}"
        return text


class GMRConv3d(_GMRConvNd):
    """3D GMR convolution with the constructor surface of ``nn.Conv3d``.

    The kernel of every (output, input) channel pair is ``sum_l W[o, i, l] R_l``, a mix of
    ``num_rings`` radially symmetric rings (default ``k // 2 + 1``). With stride 1 and
    symmetric padding the layer commutes exactly with the 48 rotations and reflections
    of the voxel grid, and approximately with any rotation.

    Parameters: ``weight`` ``(C_out, C_in / groups, num_rings)``, ``log_sigma``
    ``(num_rings,)`` and ``bias`` ``(C_out,)``, so ``C_out * C_in / groups * num_rings +
    num_rings (+ C_out)`` in total. A 9x9x9 layer with 32 channels in and out has
    ``32 * 32 * 5 + 5 + 32 = 5157`` parameters against ``32 * 32 * 729 + 32 = 746528`` for
    ``nn.Conv3d`` (about 1/145).

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: odd kernel size ``k`` (an int, or a tuple of equal ints).
        stride: stride (int). The layer is exactly equivariant only with stride 1.
        padding: int, ``"same"`` (``dilation * (k // 2)`` on every side; unlike ``nn.Conv3d`` also
            allowed with stride > 1, giving ``ceil(size / stride)`` voxels) or ``"valid"`` (0).
        dilation: spacing between kernel voxels.
        groups: blocked connections from input to output channels, as in ``nn.Conv3d``.
        bias: add a learnable bias.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        num_rings: number of rings ``n`` (1 to ``k``); default ``k // 2 + 1``.
        ring_profile: ``"gaussian"`` (default; Gaussian of the continuous distance under a
            smooth radial window, the profile nearer to rotation invariance, measured in
            docs/benchmarks.md) or ``"binned"`` (the GMR-Conv 1.0.3 reference rings, see
            ``convert_reference_state_dict``).
        strategy: ``"auto"`` (choose per input shape and device), ``"dense"``, ``"rings"`` or
            ``"spectral"``; all give the same result up to rounding.
        device: device of the parameters.
        dtype: dtype of the parameters.

    Note:
        In eval mode, calls that need no parameter gradient reuse the kernel (or ring
        spectra) built on the first call; any in-place change of ``weight`` or ``log_sigma``
        (optimizer step, ``load_state_dict``), ``.to()`` or a dtype change rebuilds it.
    """

    spatial_dims = 3


class GMRConv2d(_GMRConvNd):
    """2D GMR convolution with the constructor surface of ``nn.Conv2d``.

    Same arguments, parameters and strategies as ``GMRConv3d``, with square kernels: a
    layer commutes exactly with the 8 rotations and reflections of the pixel grid.
    Parameters: ``C_out * C_in / groups * num_rings + num_rings (+ C_out)``.
    """

    spatial_dims = 2
