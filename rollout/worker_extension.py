"""The methods this project adds to vLLM's CPU worker (``LLM(worker_extension_cls=...)``)."""
from __future__ import annotations

from .cpu_moe_weights import MoEWeightsExtension
from .routing_capture import RoutingCaptureExtension


class WorkerExtension(RoutingCaptureExtension, MoEWeightsExtension):
    """R3 routing capture (``r3_*``) and the MoE expert reload after a weight sync (``r1_load_moe_experts``)."""
