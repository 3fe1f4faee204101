"""Configuration: frozen dataclasses with a strict ``from_dict``.

One :class:`Config` holds everything a run needs. The :class:`MelConfig` and
:class:`ModelConfig` parts are saved inside every checkpoint, so a model, its
features and its vocoder can never disagree silently. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from typing import Any

from vckit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front-end. The default is the mel of the universal HiFi-GAN V1.

    Natural log of the magnitude (not power) mel, clamped at ``log_floor``;
    the waveform is reflect-padded by ``(n_fft - hop) / 2`` each side and the
    STFT is not centred, so ``frames = len(wav) // hop`` for any length.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    window: str = "hann"
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"
    power: float = 1.0
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ConfigError(f"mel: win_length {self.win_length} is larger than n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ConfigError("mel: n_fft - hop_length must be even for symmetric padding")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"mel: need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.window not in ("hann",):
            raise ConfigError(f"mel: unsupported window {self.window!r} (only 'hann')")
        if self.power not in (1.0, 2.0):
            raise ConfigError(f"mel: power must be 1 (magnitude) or 2 (power), got {self.power}")

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    def mismatch(self, other: "MelConfig") -> list[str]:
        """Names and values of the fields that differ from ``other``."""
        out = []
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: {a} vs {b}")
        return out


@dataclass(frozen=True)
class ContentConfig:
    """Content encoder: conv blocks with affine-free instance norm."""

    channels: int = 256
    blocks: int = 6
    kernel_size: int = 5
    downsample: tuple[int, ...] = (1, 2, 1, 1, 1, 1)  # stride of each block
    dim: int = 8  # bottleneck size: the main knob between leak and loss of words
    dropout: float = 0.0
    out_norm: bool = True  # instance-normalise the codes themselves
    noise_std: float = 0.0  # training-time Gaussian noise on the codes (AdaIN-VC samples with std 1)
    kl_weight: float = 0.0  # >0: penalise mean(codes**2) / 2, AdaIN-VC's KL term (use with out_norm false)
    # what the encoder reads: "mel" (the log-mel), "phonetic" (the phonetic teacher's last hidden layer,
    # projected to input_dim whitened dims; the projection is part of the model's weights) or both, "phonetic+mel"
    input: str = "mel"
    input_dim: int = 0

    def __post_init__(self) -> None:
        if self.input not in ("mel", "phonetic", "phonetic+mel"):
            raise ConfigError(f"model.content.input must be mel, phonetic or phonetic+mel, got {self.input!r}")
        if self.input != "mel" and self.input_dim <= 0:
            raise ConfigError("model.content.input phonetic needs model.content.input_dim (the projected teacher dims)")


@dataclass(frozen=True)
class VQConfig:
    enabled: bool = False
    codebook_size: int = 256
    decay: float = 0.99
    commitment: float = 0.25
    weight: float = 1.0
    dead_code_threshold: float = 1e-3  # restart codes whose EMA usage falls below this
    # False: outside training, decode the encoder's continuous codes (which the
    # commitment loss keeps near the codebook) instead of the nearest codes
    at_inference: bool = True
    # with at_inference: decode codes + inference_mix * (nearest - codes); 1 is the nearest codes,
    # between 0 and 1 a partial pull toward the codebook (the voice/words trade, measured in benchmarks)
    inference_mix: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.inference_mix <= 1.0:
            raise ConfigError(f"model.vq.inference_mix must be between 0 and 1, got {self.inference_mix}")


@dataclass(frozen=True)
class SpeakerConfig:
    channels: int = 256
    blocks: int = 4
    kernel_size: int = 5
    dim: int = 128


@dataclass(frozen=True)
class DecoderConfig:
    channels: int = 256
    blocks: int = 6
    kernel_size: int = 5


@dataclass(frozen=True)
class ClassifierConfig:
    """Adversarial speaker classifier on the content codes (gradient reversal)."""

    enabled: bool = True
    channels: int = 256
    blocks: int = 3
    weight: float = 0.1
    warmup_steps: int = 2000  # weight ramps linearly from 0 after ``start_step``
    start_step: int = 1000


@dataclass(frozen=True)
class F0Config:
    """The F0 path into the decoder: the source's log-F0 contour and voicing.

    In training the decoder reads the segment's own F0; in conversion, the
    source's contour moved to the target's median (plus any user shift), so
    the intonation follows the source and the register the target.
    """

    enabled: bool = False
    log_mean: float = 5.0  # log-F0 normalisation: (log f0 - log_mean) / log_std  (e^5 = 148 Hz)
    log_std: float = 0.4
    # also give the decoder the log-mel of a harmonic comb at the (converted) F0, through the model's own
    # filterbank (vckit.pitch.harmonic_prior), so it shapes an envelope over harmonics already in place
    harmonic_prior: bool = False


@dataclass(frozen=True)
class PhoneticHeadConfig:
    """A small head on the content codes that predicts the phonetic teacher's
    frame posteriors (training only: phonetic distillation)."""

    enabled: bool = False
    classes: int = 191
    channels: int = 256


@dataclass(frozen=True)
class DiscriminatorConfig:
    """A patch discriminator on log-mels against over-smoothing (training only)."""

    enabled: bool = False
    channels: int = 64
    layers: int = 4


@dataclass(frozen=True)
class StreamConfig:
    """Live conversion (vckit.streaming): causal convolutions, running norms from a learned prior
    worth ``norm_prior_frames``, and phonetic input made block by block (vckit.data.stream_features)."""

    causal: bool = False
    norm_prior_frames: int = 16
    block_frames: int = 6  # mel frames per block (a multiple of the content encoder's hop)
    teacher_lookahead_ms: float = 40.0  # audio the teacher hears past the block's last frame centre
    teacher_context_s: float = 2.0  # audio the teacher hears before it


@dataclass(frozen=True)
class ModelConfig:
    mel_mean: float = -5.5  # input normalisation of log-mels
    mel_std: float = 2.2
    content: ContentConfig = field(default_factory=ContentConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    f0: F0Config = field(default_factory=F0Config)
    phonetic_head: PhoneticHeadConfig = field(default_factory=PhoneticHeadConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    n_speakers: int = 0  # training speakers, for the classifier; set by the trainer


@dataclass(frozen=True)
class AugmentConfig:
    """Segment-level augmentation on cached log-mels, done on the device."""

    gain_db: float = 6.0  # uniform +-
    speed: float = 0.1  # time-stretch factor in [1-s, 1+s]
    pitch_bins: float = 2.0  # shift along the mel axis, uniform +- bins
    noise_prob: float = 0.3
    noise_db: tuple[float, float] = (-70.0, -45.0)  # white-noise level in dBFS-like units
    prob: float = 0.8  # chance a segment is augmented at all


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = "cache/shared_dev/train.jsonl"
    valid_manifest: str = "cache/shared_dev/valid.jsonl"
    features: str = "cache/shared_dev/features"
    segment_frames: int = 128
    speaker_sampling_power: float = 0.3  # 0: speakers uniform; 1: by amount of audio
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    out_dir: str = "runs/shared_dev"
    batch_size: int = 32
    steps: int = 100000
    time_budget: float = 0.0  # >0: the LR schedule follows training seconds and the run ends after this many
    lr: float = 5e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.05  # cosine decay to lr * this
    grad_clip: float = 3.0
    spectral_convergence: float = 0.0
    content_cycle: float = 0.0  # >0: L1 between the codes of a conversion to another voice and the source's codes
    # >0: L1 between the codes of a segment and of the same segment shifted along the mel axis (a pitch
    # and formant change, as between voices), so the codes keep less of the register (ContentVec's idea)
    content_invariance: float = 0.0
    invariance_bins: float = 3.0  # the shift: uniform 1..this many mel bins, either direction
    phonetic_kl: float = 0.0  # >0 (with model.phonetic_head): soft cross-entropy to the teacher's frame posteriors
    # >0 (with phone_student, a folder made by `vckit train-student`): soft cross-entropy of the frozen student's
    # posteriors of the decoded mels (reconstructions, and conversions when the run makes them) to the teacher's
    # posteriors of the source, so the decoder is told directly when a phone is lost
    phone_loss: float = 0.0
    phone_student: str = ""
    mel_gan: float = 0.0  # >0 (with model.discriminator): least-squares adversarial loss on the decoded mel
    feature_matching: float = 0.0  # L1 between the discriminator's features of decoded and real mels
    gan_start_step: int = 0  # the discriminator trains from the start; the decoder feels it from this step
    gan_on_conversions: bool = False  # also judge each segment decoded in another item's voice (and F0 register)
    amp: str = "auto"  # auto (bf16 on CUDA), bf16, fp16, none
    compile: bool = False
    # >0: also keep an exponential moving average of the weights with this decay per step (in train_state.pt;
    # `export_for_inference(..., ema=True)` ships it): at a constant learning rate it averages the step noise out
    ema: float = 0.0
    seed: int = 1234
    deterministic: bool = False
    log_every: int = 50
    valid_every: int = 1000
    ckpt_every: int = 1000
    ckpt_minutes: float = 0.0  # >0: also checkpoint after this many wall minutes since the last save
    keep_last: int = 3


@dataclass(frozen=True)
class Config:
    mel: MelConfig = field(default_factory=MelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Strict, but a key that older vckit versions wrote (:data:`REMOVED_KEYS`) is dropped with a note."""
        d = dict(d)
        for section, key in REMOVED_KEYS:
            if isinstance(d.get(section), dict) and key in d[section]:
                log.info("config: %s.%s is no longer used (it never had an effect) and is ignored", section, key)
                d[section] = {k: v for k, v in d[section].items() if k != key}
        return from_dict(cls, d)


# keys of old config.json files that are read and ignored: (section, key)
REMOVED_KEYS = (("train", "num_workers"),)


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: Any, d: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``d``; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        path = f"{where}." if where else ""
        raise ConfigError(f"unknown config key {path}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in d.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where or cls.__name__}: {e}") from None
