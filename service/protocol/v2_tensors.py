"""Open Inference Protocol v2 outputs as arrays, for any transport.

``output_arrays`` is the part of ``service.api.v2_codec.encode_response`` that does not depend on
the wire format: per-item outputs stacked back into the request's tensors, token-level outputs
cut to the request's sequence length. The HTTP codec serialises the result to JSON or binary
tensors; the gRPC front end to ``raw_output_contents``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.api.v2_codec import DecodedRequest
from service.model_config import ModelConfig
from service.tasks.base import Outputs


def output_arrays(
    decoded: DecodedRequest, outputs: Sequence[Outputs], config: ModelConfig
) -> list[tuple[str, np.ndarray]]:
    """The wanted outputs, in the order asked for: (name, C-contiguous array)."""
    specs = {s.name: s for s in config.outputs}
    arrays: list[tuple[str, np.ndarray]] = []
    for name, _binary in decoded.wanted:
        if decoded.rows is None:
            arr = outputs[0][name]
        else:
            parts = [o[name] for o in outputs]
            if decoded.seq_len is not None and specs[name].dims[:1] == [-1]:
                # token-level outputs come back padded to the longest text of the batch they ran
                # in; cut them to this request's length so results do not depend on the batch
                parts = [p[: decoded.seq_len] for p in parts]
            arr = np.stack(parts)
        arrays.append((name, np.ascontiguousarray(arr)))
    return arrays
