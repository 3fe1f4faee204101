"""The phonetic teacher: hama's CTC phoneme recogniser, run with ONNX Runtime.

hama (PyPI, Apache-2.0) ships a 2.3 M-parameter phoneme recogniser as an fp16
ONNX graph: 16 kHz waveform in, log-posteriors over 191 symbols (IPA phonemes,
a word boundary and the CTC blank) at 50 Hz out. Its last hidden layer
(256 dims, before the CTC projection) carries the phonetic content of each
frame and little of the speaker; the graph is edited on load so it returns
that layer too. Nothing is downloaded: the weights are inside the package.

Frames are resampled to the mel frame rate, so the teacher's features can
stand beside the mel frames in the feature cache and in the model:

    teacher = PhoneticTeacher()
    frames = teacher.frames(wav, sr=22050, n_frames=mel.shape[-1])
    frames.hidden        # (n_frames, 256) float32
    frames.log_probs     # (n_frames, 191) float32
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from vckit.errors import VckitError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_S = 0.02  # one teacher frame per 320 samples at 16 kHz
HIDDEN_DIM = 256
N_CLASSES = 191
BLANK = N_CLASSES - 1
PHONETIC_CLIP = 4.0  # the whitened, projected hidden features are clipped (and cached) over [-4, 4]
HIDDEN_OUTPUT = "/acoustic_model/Transpose_2_output_0"
HAMA_VERSION = "1.3.10"  # the last release that ships the ONNX graph
WINDOW_S = 30.0  # the recogniser attends over its whole input: long audio goes in windows
CONTEXT_S = 2.0  # of context either side of each window


@dataclasses.dataclass
class TeacherFrames:
    """The teacher's view of an utterance, one row per frame."""

    hidden: np.ndarray  # (frames, 256) float32, last hidden layer
    log_probs: np.ndarray  # (frames, 191) float32, CTC log-posteriors


class PhoneticTeacher:
    """hama's phoneme recogniser, returning hidden features and posteriors.

    Args:
        threads: ONNX Runtime intra-op threads (0: its default).
    Raises:
        VckitError: hama or onnx is not installed.
    """

    hidden_dim = HIDDEN_DIM  # the front-end sizes its arrays by it

    def __init__(self, threads: int = 1):
        try:
            from importlib import resources

            import onnx
            import onnxruntime as ort

            path = resources.files("hama.assets").joinpath("asr_waveform_fp16.onnx")
            if not path.is_file():
                raise FileNotFoundError(str(path))
        except (ImportError, FileNotFoundError, ModuleNotFoundError) as e:
            raise VckitError(
                f"this model reads phonetic features from hama's phoneme recogniser, which is not installed ({e}): "
                f"pip install 'hama=={HAMA_VERSION}' onnx"
            ) from None
        graph = onnx.load(str(path))
        if HIDDEN_OUTPUT not in {o for n in graph.graph.node for o in n.output}:
            raise VckitError(f"hama's recogniser has no layer {HIDDEN_OUTPUT}: install hama=={HAMA_VERSION}")
        graph.graph.output.append(onnx.helper.make_tensor_value_info(HIDDEN_OUTPUT, onnx.TensorProto.FLOAT16, None))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: a live stream's torch work needs the cores
        self.session = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def run16k(self, wav16: np.ndarray) -> TeacherFrames:
        """16 kHz mono float ``(samples,)`` -> frames at 50 Hz.

        Audio longer than 30 s goes through in windows with 2 s of context
        either side, so memory stays bounded.
        """
        wav16 = np.ascontiguousarray(wav16, dtype=np.float32)
        n_out = len(wav16) // int(SAMPLE_RATE * FRAME_S) + 1
        win, ctx = int(WINDOW_S * SAMPLE_RATE), int(CONTEXT_S * SAMPLE_RATE)
        hidden, lp = in_windows(self._run, wav16, win, ctx, int(SAMPLE_RATE * FRAME_S))
        hidden, lp = fit_length(hidden, n_out), fit_length(lp, n_out)
        return TeacherFrames(hidden, lp)

    def _run(self, wav16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lp, lengths, hidden = self.session.run(None, {"waveform": wav16[None], "waveform_lengths": np.array([len(wav16)], dtype=np.int64)})
        n = int(lengths[0])
        return hidden[0, :, :n].T.astype(np.float32), lp[0, :n].astype(np.float32)

    def window_hidden(self, window: np.ndarray, sr: int, start: int, frames: np.ndarray, hop_length: int) -> np.ndarray:
        """The hidden layer at mel ``frames`` from one window of a stream, heard alone as a live stream hears it.

        window: (samples,) at ``sr``, the stream's samples ``[start, start + len)``. Returns
        ``(len(frames), 256)``. The block-by-block front-end (:mod:`vckit.frontend`) calls this
        for the live stream and for a causal model's training features alike.
        """
        from vckit.audio import resample

        wav16 = resample(np.ascontiguousarray(window, dtype=np.float32), sr, SAMPLE_RATE)
        hidden, _ = self._run(wav16) if len(wav16) >= int(SAMPLE_RATE * FRAME_S) else (np.zeros((1, HIDDEN_DIM), np.float32), None)
        times = (np.asarray(frames) + 0.5) * hop_length / sr - start / sr
        return resample_frames(hidden, times)

    def frames(self, wav: np.ndarray, sr: int, n_frames: int, hop_length: int = 256) -> TeacherFrames:
        """Teacher frames resampled to ``n_frames`` frames of ``hop_length`` samples at ``sr``.

        wav: (samples,) mono float at ``sr``; mel frame ``j`` is centred on
        sample ``j * hop_length + hop_length / 2``.
        """
        from vckit.audio import resample

        wav16 = resample(np.asarray(wav, dtype=np.float32), sr, SAMPLE_RATE)
        t50 = self.run16k(wav16)
        times = (np.arange(n_frames) + 0.5) * hop_length / sr
        return TeacherFrames(resample_frames(t50.hidden, times), resample_frames(t50.log_probs, times))


class ConcatTeacher:
    """Two teachers heard side by side (``model.content.teacher: hama+whisper``): their hidden layers concatenated
    per frame, the first one's posteriors. Offline only, where either teacher is."""

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.hidden_dim = first.hidden_dim + second.hidden_dim

    def frames(self, wav: np.ndarray, sr: int, n_frames: int, hop_length: int = 256) -> TeacherFrames:
        a, b = self.first.frames(wav, sr, n_frames, hop_length), self.second.frames(wav, sr, n_frames, hop_length)
        return TeacherFrames(np.concatenate([a.hidden, b.hidden], axis=1), a.log_probs)

    def window_hidden(self, window: np.ndarray, sr: int, start: int, frames: np.ndarray, hop_length: int) -> np.ndarray:
        parts = [t.window_hidden(window, sr, start, frames, hop_length) for t in (self.first, self.second)]
        return np.concatenate(parts, axis=1)


def in_windows(run, wav16: np.ndarray, win: int, ctx: int, hop: int) -> tuple[np.ndarray, ...]:
    """``run(wav16)`` -> a tuple of per-frame arrays ``(T, D)`` at ``hop`` samples a frame, over audio of any length:
    audio longer than ``win + 2 * ctx`` samples goes in windows of ``win`` with ``ctx`` of context either side,
    each window's own frames kept and joined, so memory stays bounded."""
    if len(wav16) <= win + 2 * ctx:
        return run(wav16)
    parts = []
    for start in range(0, len(wav16), win):
        lo = max(0, start - ctx)
        outs = run(wav16[lo : start + win + ctx])
        skip = (start - lo) // hop
        keep = min(win // hop, len(outs[0]) - skip)
        parts.append([o[skip : skip + keep] for o in outs])
    return tuple(np.concatenate(p) for p in zip(*parts))


def resample_frames(feats: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Linear interpolation of 50 Hz teacher frames ``(T, D)`` at ``times`` (seconds) -> ``(len(times), D)``."""
    pos = np.clip(times / FRAME_S - 0.5, 0, len(feats) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(feats) - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    return (feats[lo] * (1 - w) + feats[hi] * w).astype(np.float32)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)]) if len(x) else np.zeros((n, x.shape[1]), np.float32)


__all__ = ["PhoneticTeacher", "ConcatTeacher", "TeacherFrames", "in_windows", "resample_frames", "SAMPLE_RATE", "HIDDEN_DIM", "N_CLASSES", "BLANK"]
