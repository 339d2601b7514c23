"""Metadata → embedding added to the UNet time embedding (CRS-Diff / DiffusionSat practice).

Each numeric field is normalised to [0, 1] by its :class:`FieldSpec`, scaled to 0–1000, embedded
sinusoidally like a diffusion timestep, passed through its own small MLP, and the per-field
embeddings are summed. An unknown field contributes a learned per-field *null* vector instead; the
all-unknown record is the null condition of classifier-free guidance. The sum is handed to
diffusers' ``UNet2DConditionModel`` as ``class_labels`` with ``class_embed_type="identity"``, which
adds it to the time embedding, so the UNet is used unmodified.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from conditions.metadata import Metadata, MetadataError
from conditions.metadata_adapters import DIFFUSIONSAT_FIELDS, to_diffusionsat


@dataclass(frozen=True)
class FieldSpec:
    """How one numeric metadata field is normalised to [0, 1] for a model."""

    name: str
    min: float
    max: float
    scale: str = "linear"  # "linear" or "log"
    unit: str = ""

    def __post_init__(self) -> None:
        if self.scale not in ("linear", "log"):
            raise ValueError(f"FieldSpec({self.name}).scale={self.scale!r}: expected 'linear' or 'log'")
        if not self.max > self.min:
            raise ValueError(f"FieldSpec({self.name}): max={self.max} must be greater than min={self.min}")
        if self.scale == "log" and self.min <= 0:
            raise ValueError(f"FieldSpec({self.name}): a log-scaled field needs min > 0, got {self.min}")

    def normalise(self, value: float) -> float:
        if not self.min <= value <= self.max:
            raise MetadataError(
                f"metadata.{self.name}={value:g}{self.unit and ' ' + self.unit} is outside the range this "
                f"model was trained on [{self.min:g}, {self.max:g}]; pass a value inside it or leave it "
                "unset for 'unknown'"
            )
        if self.scale == "log":
            return (math.log(value) - math.log(self.min)) / (math.log(self.max) - math.log(self.min))
        return (value - self.min) / (self.max - self.min)


# The default schema of rsgen models. Units follow conditions.metadata.
DEFAULT_FIELD_SPECS: tuple[FieldSpec, ...] = (
    FieldSpec("gsd", 0.05, 500.0, "log", "m/px"),
    FieldSpec("lat", -90.0, 90.0, "linear", "deg"),
    FieldSpec("lon", -180.0, 180.0, "linear", "deg"),
    FieldSpec("year", 1970.0, 2040.0, "linear", "year"),
    FieldSpec("month", 1.0, 12.0, "linear", "month"),
    FieldSpec("day", 1.0, 31.0, "linear", "day"),
    FieldSpec("cloud", 0.0, 1.0, "linear", "fraction"),
)
DEFAULT_SENSORS: tuple[str, ...] = ("sentinel-2", "landsat-8", "naip", "worldview-3", "google-earth", "aerial")


@dataclass
class PreparedMetadata:
    """Normalised metadata of a batch, ready for :class:`MetadataEncoder`."""

    values: torch.Tensor  # (B, F) float32 in [0, 1]; 0 where unknown
    known: torch.Tensor  # (B, F) bool
    sensor_ids: torch.Tensor  # (B,) long; len(sensors) = unknown

    def repeat_interleave(self, repeats: int) -> PreparedMetadata:
        return PreparedMetadata(
            self.values.repeat_interleave(repeats, dim=0),
            self.known.repeat_interleave(repeats, dim=0),
            self.sensor_ids.repeat_interleave(repeats, dim=0),
        )


class MetadataEncoder(ModelMixin, ConfigMixin):
    """Sum of per-field sinusoidal-embedding MLPs; unknown fields use a learned null vector."""

    @register_to_config
    def __init__(
        self,
        fields: Sequence[dict[str, Any]] = tuple(asdict(s) for s in DEFAULT_FIELD_SPECS),
        sensors: Sequence[str] = DEFAULT_SENSORS,
        embedding_dim: int = 1280,
        frequency_dim: int = 256,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.specs = [FieldSpec(**f) for f in fields]
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"MetadataEncoder: duplicate field names in {names}")
        self.sensor_names = [s.lower() for s in sensors]
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(frequency_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, embedding_dim))
            for _ in self.specs
        )
        self.null_embeddings = nn.Parameter(torch.randn(len(self.specs), embedding_dim) * 0.02)
        # Index len(sensors) is the 'unknown sensor' row.
        self.sensor_embedding = nn.Embedding(len(self.sensor_names) + 1, embedding_dim)

    @property
    def field_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def schema(self) -> dict[str, Any]:
        """The conditioning schema, as written to ``rsgen_model.json``."""
        return {"fields": [asdict(s) for s in self.specs], "sensors": list(self.sensor_names)}

    def prepare(self, records: Sequence[Metadata | None]) -> PreparedMetadata:
        """Validate and normalise records against this model's schema (CPU tensors)."""
        values = torch.zeros(len(records), len(self.specs), dtype=torch.float32)
        known = torch.zeros(len(records), len(self.specs), dtype=torch.bool)
        sensor_ids = torch.full((len(records),), len(self.sensor_names), dtype=torch.long)
        spec_index = {s.name: j for j, s in enumerate(self.specs)}
        for i, record in enumerate(records):
            if record is None:
                continue
            for name, value in record.numeric_fields().items():
                if value is None:
                    continue
                if name not in spec_index:
                    raise MetadataError(
                        f"metadata.{name}={value:g}: this model was not trained with '{name}' "
                        f"(it knows {self.field_names}); leave it unset"
                    )
                j = spec_index[name]
                values[i, j] = self.specs[j].normalise(value)
                known[i, j] = True
            if record.sensor is not None:
                if record.sensor not in self.sensor_names:
                    raise MetadataError(
                        f"metadata.sensor={record.sensor!r} is not one this model knows "
                        f"({self.sensor_names}); use one of them or leave it unset for 'unknown'"
                    )
                sensor_ids[i] = self.sensor_names.index(record.sensor)
        return PreparedMetadata(values, known, sensor_ids)

    def forward(self, values: torch.Tensor, known: torch.Tensor, sensor_ids: torch.Tensor) -> torch.Tensor:
        batch, num_fields = values.shape  # (B, F)
        freq_dim = self.mlps[0][0].in_features
        param = self.null_embeddings
        flat = values.to(param.device, torch.float32).reshape(-1) * 1000.0  # (B*F,)
        sinus = get_timestep_embedding(flat, freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        sinus = sinus.reshape(batch, num_fields, freq_dim).to(param.dtype)  # (B, F, freq_dim)
        per_field = torch.stack([mlp(sinus[:, j]) for j, mlp in enumerate(self.mlps)], dim=1)  # (B, F, E)
        null = self.null_embeddings.unsqueeze(0).expand_as(per_field)  # (B, F, E)
        mask = known.to(param.device).unsqueeze(-1)  # (B, F, 1)
        embedding = torch.where(mask, per_field, null).sum(dim=1)  # (B, E)
        return embedding + self.sensor_embedding(sensor_ids.to(param.device))  # (B, E)

    def encode(self, records: Sequence[Metadata | None]) -> torch.Tensor:
        prepared = self.prepare(records)
        return self(prepared.values, prepared.known, prepared.sensor_ids)


class DiffusionSatMetadataEncoder(ModelMixin, ConfigMixin):
    """DiffusionSat's metadata embedding (Khanna et al. 2024, ``diffusionsat/sat_unet.py``), outside the UNet.

    Seven fields ``[lon, lat, gsd, cloud, year, month, day]``, normalised to DiffusionSat's 0–1000 scale by
    :func:`conditions.metadata_adapters.to_diffusionsat` (0 where unknown, as DiffusionSat itself does), each
    projected sinusoidally exactly like the UNet's timestep (``Timesteps(block_out_channels[0], flip_sin_to_cos,
    freq_shift)``), passed through its own ``TimestepEmbedding`` (``metadata_embedding.{i}``) and summed. SatUNet
    adds that sum to its time embedding; here it reaches a stock ``UNet2DConditionModel`` as ``class_labels``
    (``class_embed_type="identity"``), which adds it at the same point. The classifier-free-guidance null
    condition is the all-zero vector, as in DiffusionSat's pipeline (``torch.zeros_like(md)``).
    """

    @register_to_config
    def __init__(
        self,
        embedding_dim: int = 1280,
        frequency_dim: int = 320,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0.0,
        num_metadata: int = 7,
    ) -> None:
        super().__init__()
        if num_metadata != len(DIFFUSIONSAT_FIELDS):
            raise ValueError(
                f"DiffusionSatMetadataEncoder: num_metadata={num_metadata}; rsgen maps the {len(DIFFUSIONSAT_FIELDS)} "
                f"published fields {list(DIFFUSIONSAT_FIELDS)}"
            )
        self.metadata_embedding = nn.ModuleList(
            TimestepEmbedding(frequency_dim, embedding_dim) for _ in range(num_metadata)
        )  # the SatUNet's own key names: metadata_embedding.{i}.linear_{1,2}
        self.sensor_names: list[str] = []

    @property
    def field_names(self) -> list[str]:
        return list(DIFFUSIONSAT_FIELDS)

    def schema(self) -> dict[str, Any]:
        """The conditioning schema, as written to ``rsgen_model.json``."""
        return {"encoding": "diffusionsat", "fields": self.field_names, "scale": 1000.0, "sensors": []}

    def prepare(self, records: Sequence[Metadata | None]) -> PreparedMetadata:
        """DiffusionSat's normalised 7-vectors (B, 7); ``None`` records (the null condition) are all zero."""
        values = torch.zeros(len(records), len(self.field_names), dtype=torch.float32)
        known = torch.zeros(len(records), len(self.field_names), dtype=torch.bool)
        for i, record in enumerate(records):
            if record is None:
                continue
            if record.sensor is not None:
                raise MetadataError(
                    f"metadata.sensor={record.sensor!r}: DiffusionSat has no sensor input (its fields are "
                    f"{self.field_names}); leave the sensor unset"
                )
            if record.extra:
                raise MetadataError(
                    f"metadata.extra {sorted(record.extra)}: DiffusionSat takes only {self.field_names}; drop them"
                )
            values[i] = torch.tensor(to_diffusionsat(record), dtype=torch.float32)
            fields = record.numeric_fields()
            known[i] = torch.tensor([fields[name] is not None for name in self.field_names])
        return PreparedMetadata(values, known, torch.zeros(len(records), dtype=torch.long))

    def forward(
        self, values: torch.Tensor, known: torch.Tensor | None = None, sensor_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 7) normalised values → (B, E), the sum of the per-field embeddings (``known`` / ``sensor_ids`` are
        unused: unknown fields are already 0, DiffusionSat's placeholder)."""
        param = self.metadata_embedding[0].linear_1.weight
        batch, num_fields = values.shape  # (B, 7)
        freq_dim = self.config.frequency_dim
        sinus = get_timestep_embedding(
            values.to(param.device, torch.float32).reshape(-1), freq_dim,
            flip_sin_to_cos=self.config.flip_sin_to_cos, downscale_freq_shift=self.config.freq_shift,
        )  # fmt: skip
        sinus = sinus.reshape(batch, num_fields, freq_dim).to(param.dtype)  # (B, 7, D)
        embedding = torch.zeros(batch, self.config.embedding_dim, device=param.device, dtype=param.dtype)
        for j, embed in enumerate(self.metadata_embedding):
            embedding = embedding + embed(sinus[:, j])  # (B, E), summed in SatUNet's order
        return embedding

    def encode(self, records: Sequence[Metadata | None]) -> torch.Tensor:
        return self(self.prepare(records).values)
