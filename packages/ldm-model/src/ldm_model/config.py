"""Model configurations: a pydantic model, and the named ones (CPU-sized, the paper's four).

The paper gives its models by parameter count (32M, 70M, 308M, 736M) and its main one as 12
layers, 12 heads, hidden 768, context 2048 transitions. How those counts split between the
embeddings and the backbone is ours: every value is embedded at `token_dim` and the meta-token
merge is one linear layer over all of them, so `token_dim` and the MLP width were chosen to land
each named config within 1% of the paper's count (`ldm-model list` prints the counts; a test
checks them). The 308M config is the paper's 12 x 12 x 768 at context 2048. The CPU-sized ones,
`tiny` (2.2M), `small` (5.1M) and `base` (13.3M), share a context of 64 transitions, so they
can train on the same windows for a model-size comparison (`ldm-eval sizes`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ldm_model.tokenizer import ACT_DIMS, DISCRETE_VOCAB, IMAGE_SIZE, MU, MU_M, N_BINS, OBS_DIMS


class ModelConfig(BaseModel):
    """Everything that shapes the network's weights; saved next to every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int | None = None
    intermediate_size: int = Field(gt=0)
    #: Context length in transitions (one meta-token per transition).
    context: int = Field(gt=0)
    #: Width of each value's embedding before the meta-token merge.
    token_dim: int = Field(gt=0)
    #: Width of the convolutional image encoder's output.
    image_dim: int = Field(gt=0)
    n_bins: int = N_BINS
    discrete_vocab: int = DISCRETE_VOCAB
    obs_dims: int = OBS_DIMS
    act_dims: int = ACT_DIMS
    image_size: int = IMAGE_SIZE
    mu: float = MU
    mu_m: float = MU_M
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        return self


NAMED_CONFIGS: dict[str, ModelConfig] = {
    # Learns classic-control in minutes on a laptop CPU.
    "tiny": ModelConfig(
        name="tiny",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        context=64,
        token_dim=8,
        image_dim=64,
    ),
    # CPU-scale steps between `tiny` and `32M` for model-size comparisons (`ldm-eval sizes`):
    # 2.2M -> 5.1M -> 13.3M parameters, same context, each a few times slower per step.
    "small": ModelConfig(
        name="small",
        hidden_size=128,
        num_layers=3,
        num_heads=4,
        intermediate_size=512,
        context=64,
        token_dim=16,
        image_dim=128,
    ),
    "base": ModelConfig(
        name="base",
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        intermediate_size=1024,
        context=64,
        token_dim=32,
        image_dim=256,
    ),
    "32M": ModelConfig(
        name="32M",
        hidden_size=384,
        num_layers=6,
        num_heads=6,
        intermediate_size=1280,
        context=2048,
        token_dim=128,
        image_dim=384,
    ),
    "70M": ModelConfig(
        name="70M",
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        intermediate_size=2048,
        context=2048,
        token_dim=256,
        image_dim=512,
    ),
    "308M": ModelConfig(
        name="308M",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=5824,
        context=2048,
        token_dim=768,
        image_dim=768,
    ),
    "736M": ModelConfig(
        name="736M",
        hidden_size=1024,
        num_layers=24,
        num_heads=16,
        intermediate_size=5888,
        context=2048,
        token_dim=1024,
        image_dim=1024,
    ),
}
#: The parameter counts the paper gives its models.
PAPER_PARAMETERS: dict[str, int] = {
    "32M": 32_000_000,
    "70M": 70_000_000,
    "308M": 308_000_000,
    "736M": 736_000_000,
}


def get_config(name: str) -> ModelConfig:
    """A named config.

    Raises:
        KeyError: naming the unknown config and listing the known ones.
    """
    try:
        return NAMED_CONFIGS[name]
    except KeyError:
        raise KeyError(
            f"unknown model config {name!r}; known: {', '.join(NAMED_CONFIGS)}"
        ) from None
