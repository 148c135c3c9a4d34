"""Instrument clips: General MIDI families, notes in a musical style, a Standard MIDI File, fluidsynth.

An instrument clip draws an instrument family, a style (melody, chords, strumming, arpeggio,
bass line, riff or drum groove), a key, mode, tempo and register; its notes are written as a
one-track MIDI file and rendered by the fluidsynth CLI with a General MIDI soundfont.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from training.data.generation import (
    CLIP_SECONDS,
    SAMPLE_RATE,
    CorpusError,
    draw_captions,
    pick,
    run_renderer,
    with_article,
)

FLUIDSYNTH = "fluidsynth"  # the renderer's command
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # Debian fluid-soundfont-gm
FLUIDSYNTH_GAIN = "0.8"


# ---------------------------------------------------------------- MIDI file writing

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9  # General MIDI: percussion is channel 10 (9 counting from 0)


@dataclass(frozen=True)
class Note:
    start: float  # beats
    length: float  # beats
    key: int  # MIDI key number
    velocity: int  # 1..127


def _variable_length(value: int) -> bytes:
    """A Standard MIDI File variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_file(notes: Sequence[Note], bpm: float, program: int, channel: int, reverb: int) -> bytes:
    """A Standard MIDI File (format 0, one track) playing `notes` with one program."""
    tempo = round(60_000_000 / bpm)  # microseconds per quarter note
    # (tick, order at equal ticks, event bytes): note-offs sort before note-ons.
    events = [
        (0, 0, bytes([0xFF, 0x51, 0x03]) + tempo.to_bytes(3, "big")),
        (0, 0, bytes([0xC0 | channel, program])),
        (0, 0, bytes([0xB0 | channel, 7, 100])),  # controller 7: channel volume
        (0, 0, bytes([0xB0 | channel, 91, reverb])),  # controller 91: reverb send
    ]
    for note in notes:
        on = round(note.start * TICKS_PER_BEAT)
        off = max(on + 1, round((note.start + note.length) * TICKS_PER_BEAT))
        events.append((on, 2, bytes([0x90 | channel, note.key, note.velocity])))
        events.append((off, 1, bytes([0x80 | channel, note.key, 0])))
    end = max(tick for tick, _, _ in events) + TICKS_PER_BEAT
    events.append((end, 3, bytes([0xFF, 0x2F, 0x00])))  # end of track
    events.sort(key=lambda event: (event[0], event[1]))
    track = bytearray()
    last = 0
    for tick, _, data in events:
        track += _variable_length(tick - last) + data
        last = tick
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_BEAT)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


# ---------------------------------------------------------------- music

SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # semitones above the key
PENTATONIC = {"major": (0, 2, 4, 7, 9), "minor": (0, 3, 5, 7, 10)}
PROGRESSIONS = {  # scale degrees counted from 0: (0, 4, 5, 3) is I-V-vi-IV
    "major": ((0, 4, 5, 3), (0, 3, 4, 0), (5, 3, 0, 4), (1, 4, 0, 0), (0, 5, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 4)),
}


@dataclass(frozen=True)
class Instrument:
    keyword: str
    noun: str  # in captions
    programs: tuple[int, ...]  # General MIDI Level 1 program numbers, counted from 0
    low: int  # playable range, MIDI keys
    high: int
    styles: tuple[str, ...]
    verb: str = "playing"
    drums: bool = False


INSTRUMENTS = (
    Instrument("piano", "piano", (0, 1, 2), 36, 96, ("melody", "chords", "arpeggio")),
    Instrument("organ", "organ", (16, 17, 18, 19), 36, 84, ("melody", "chords")),
    Instrument("acoustic guitar", "acoustic guitar", (24, 25), 40, 76, ("strumming", "arpeggio", "melody")),
    Instrument("electric guitar", "electric guitar", (26, 27, 29, 30), 40, 79,
               ("riff", "strumming", "melody")),
    Instrument("bass guitar", "bass guitar", (32, 33, 34, 35), 28, 55, ("bassline",)),
    Instrument("violin", "violin", (40,), 55, 93, ("melody",)),
    Instrument("cello", "cello", (42,), 36, 72, ("melody", "bassline")),
    Instrument("string ensemble", "string section", (48, 49), 40, 84, ("chords", "melody")),
    Instrument("trumpet", "trumpet", (56,), 55, 82, ("melody",)),
    Instrument("trombone", "trombone", (57,), 40, 72, ("melody",)),
    Instrument("saxophone", "saxophone", (64, 65, 66), 49, 80, ("melody",)),
    Instrument("flute", "flute", (73,), 60, 96, ("melody", "arpeggio")),
    Instrument("clarinet", "clarinet", (71,), 50, 89, ("melody", "arpeggio")),
    Instrument("choir", "choir", (52, 53), 48, 79, ("chords", "melody"), verb="singing"),
    Instrument("synth lead", "synth lead", (80, 81), 48, 84, ("melody", "arpeggio")),
    Instrument("synth pad", "synth pad", (88, 89, 90), 36, 84, ("chords",)),
    Instrument("marimba", "marimba", (12,), 45, 96, ("melody", "arpeggio")),
    # Drum kits are programs of the percussion bank:
    # 0 standard, 8 room, 16 power, 25 TR-808, 32 jazz, 40 brush.
    Instrument("drum kit", "drum kit", (0, 8, 16, 25, 32, 40), 35, 81, ("beat",), drums=True),
)
INSTRUMENTS_BY_KEYWORD = {instrument.keyword: instrument for instrument in INSTRUMENTS}

CAPTION_TEMPLATES = {
    "melody": (
        "{a_noun} {verb} a {tempo} melody",
        "a {mood} melody {played_on}",
        "{a_noun} {verb} a {mood} tune in a {mode} key",
        "a {tempo} {noun} solo",
    ),
    "chords": (
        "chords {played_on}",
        "{a_noun} {verb} {tempo} chords",
        "{mood} {mode} chords {played_on}",
        "{a_noun} {verb} a chord progression",
    ),
    "strumming": (
        "{a_noun} strumming chords",
        "chords strummed on {a_noun}",
        "someone strumming {a_noun} in a {mode} key",
        "a {tempo} strummed rhythm on {a_noun}",
    ),
    "arpeggio": (
        "{a_noun} {verb} arpeggios",
        "broken chords {played_on}",
        "a {tempo} arpeggio {played_on}",
        "{a_noun} {verb} a {mood} arpeggiated pattern",
    ),
    "bassline": (
        "{a_noun} {verb} a bass line",
        "a {tempo} bass line {played_on}",
        "a low {mood} groove {played_on}",
    ),
    "riff": (
        "{a_noun} {verb} a repeating riff",
        "a {tempo} riff {played_on}",
        "a {mood} {noun} riff repeated again and again",
    ),
    "beat": (
        "{a_noun} playing a {tempo} {groove} beat",
        "drums keeping a {tempo} {groove} rhythm",
        "a drummer playing a {groove} groove",
        "a {tempo} drum beat",
    ),
}
MOODS = {"major": ("cheerful", "bright", "happy"), "minor": ("sad", "gloomy", "melancholic")}
GROOVE_NAMES = ("rock", "dance", "half-time", "shuffle")


def _played_on(instrument: Instrument) -> str:
    """ "played on a piano", "sung by a choir", "played by a string section"."""
    if instrument.verb == "singing":
        return f"sung by {with_article(instrument.noun)}"
    preposition = "by" if instrument.noun == "string section" else "on"
    return f"played {preposition} {with_article(instrument.noun)}"


def _tempo_word(bpm: float) -> str:
    return "slow" if bpm < 85 else "fast" if bpm > 130 else "medium-tempo"


@dataclass(frozen=True)
class Music:
    """The musical frame of one clip; times in beats, keys as MIDI numbers."""

    bpm: float
    root: int  # pitch class of the key, 0 = C
    mode: str  # "major" | "minor"
    progression: tuple[int, ...]
    beats_per_chord: int
    low: int  # register
    high: int
    start: float  # beat of the first sound
    end: float  # beat after which nothing starts
    velocity: int

    def scale_keys(self) -> list[int]:
        steps = SCALES[self.mode]
        return [key for key in range(self.low, self.high + 1) if (key - self.root) % 12 in steps]

    def chord(self, beat: float) -> tuple[int, int, int]:
        """Pitch classes of the triad sounding at `beat`, root first."""
        index = int((beat - self.start) // self.beats_per_chord) % len(self.progression)
        degree = self.progression[index]
        steps = SCALES[self.mode]
        return tuple((self.root + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4))

    def bars(self) -> range:
        return range(int(np.ceil((self.end - self.start) / 4)))

    def lowest(self, pitch_class: int) -> int:
        """The lowest key of a pitch class in the register."""
        return self.low + (pitch_class - self.low) % 12

    def velocity_of(self, rng: np.random.Generator, accent: int = 0) -> int:
        return int(np.clip(self.velocity + accent + rng.integers(-10, 11), 1, 127))


def _voicing(chord: Sequence[int], low: int, high: int, size: int) -> list[int]:
    """`size` distinct keys of the chord stacked upward from its root, in the upper
    three quarters of [low, high]."""
    bottom = low + (high - low) // 4
    first = bottom + (chord[0] - bottom) % 12
    keys = [key for key in range(first, high + 1) if key % 12 in chord][:size]
    if len(keys) < size:
        keys = [key for key in range(low, high + 1) if key % 12 in chord][:size]
    return keys


def _melody(m: Music, rng: np.random.Generator) -> list[Note]:
    keys = m.scale_keys()
    position = len(keys) // 2
    notes, beat = [], m.start
    durations, weights = (0.5, 1.0, 1.5, 2.0), (0.35, 0.4, 0.1, 0.15)
    while beat < m.end:
        duration = float(durations[rng.choice(len(durations), p=weights)])
        if notes and rng.random() < 0.12:  # a rest, never before the first note
            beat += duration
            continue
        position = int(np.clip(position + pick(rng, (-2, -1, -1, 0, 1, 1, 2, -3, 3)), 0, len(keys) - 1))
        on_chord_change = (beat - m.start) % m.beats_per_chord == 0
        if on_chord_change and rng.random() < 0.6:  # lean on a chord tone
            chord = m.chord(beat)
            tones = [i for i, key in enumerate(keys) if key % 12 in chord]
            if tones:
                position = min(tones, key=lambda i: abs(i - position))
        accent = 8 if on_chord_change else 0
        length = duration * rng.uniform(0.8, 0.98)
        notes.append(Note(beat, length, keys[position], m.velocity_of(rng, accent)))
        phrase = int((beat - m.start) // 8)
        beat += duration
        if int((beat - m.start) // 8) != phrase and rng.random() < 0.35:  # breath between phrases
            beat += float(pick(rng, (1.0, 2.0)))
    return notes


CHORD_RHYTHMS = (  # (offset, length) in beats within a 4-beat bar
    ((0, 4),),
    ((0, 2), (2, 2)),
    ((0, 1), (1, 1), (2, 1), (3, 1)),
    ((0, 1.5), (1.5, 1.5), (3, 1)),
)


def _chords(m: Music, rng: np.random.Generator) -> list[Note]:
    rhythm = pick(rng, CHORD_RHYTHMS)
    size = int(rng.integers(3, 5))
    notes = []
    for bar in m.bars():
        for offset, length in rhythm:
            beat = m.start + 4 * bar + offset
            if beat >= m.end:
                break
            velocity = m.velocity_of(rng, 6 if offset == 0 else 0)
            for key in _voicing(m.chord(beat), m.low, m.high, size):
                notes.append(Note(beat, length * 0.95, key, velocity))
    return notes


STRUM_PATTERNS = ("D-D-D-D-", "D-DU-UDU", "D--UD-DU", "DUDUDUDU", "D---D-DU")  # eighth-note grid


def _strumming(m: Music, rng: np.random.Generator) -> list[Note]:
    pattern = pick(rng, STRUM_PATTERNS)
    hits = [slot for slot, stroke in enumerate(pattern) if stroke != "-"]
    strum = rng.uniform(0.012, 0.03) * m.bpm / 60.0  # seconds between strings, in beats
    notes = []
    for bar in m.bars():
        for number, slot in enumerate(hits):
            beat = m.start + 4 * bar + slot * 0.5
            if beat >= m.end:
                break
            next_slot = hits[number + 1] if number + 1 < len(hits) else 8
            span = (next_slot - slot) * 0.5
            keys = _voicing(m.chord(beat), m.low, m.high, 5)
            down = pattern[slot] == "D"
            velocity = m.velocity_of(rng, 8 if down else -8)
            for string, key in enumerate(keys if down else keys[::-1]):
                delay = string * strum
                notes.append(Note(beat + delay, max(span - delay, 0.1), key, velocity))
    return notes


def _arpeggio(m: Music, rng: np.random.Generator) -> list[Note]:
    step = 0.25 if m.bpm < 100 else 0.5
    shape = pick(rng, ("up", "down", "updown"))
    ring = rng.uniform(0.9, 1.8)
    notes, beat, count, chord = [], m.start, 0, None
    while beat < m.end:
        if m.chord(beat) != chord:
            chord, count = m.chord(beat), 0
            keys = _voicing(chord, m.low, m.high, 6)
            sequence = {"up": keys, "down": keys[::-1], "updown": keys + keys[-2:0:-1]}[shape]
        velocity = m.velocity_of(rng, 6 if count == 0 else 0)
        notes.append(Note(beat, step * ring, sequence[count % len(sequence)], velocity))
        count += 1
        beat += step
    return notes


BASS_PATTERNS = (  # (offset, length, semitones above the chord root) in a 4-beat bar
    ((0, 1, 0), (1, 1, 0), (2, 1, 0), (3, 1, 0)),
    ((0, 1.5, 0), (1.5, 0.5, 0), (2, 1.5, 7), (3.5, 0.5, 12)),
    tuple((i * 0.5, 0.5, 0) for i in range(8)),
    ((0, 2.5, 0), (3, 0.75, 7)),
)


def _bassline(m: Music, rng: np.random.Generator) -> list[Note]:
    pattern = pick(rng, BASS_PATTERNS)
    notes = []
    for bar in m.bars():
        for offset, length, interval in pattern:
            beat = m.start + 4 * bar + offset
            if beat >= m.end:
                break
            key = m.lowest(m.chord(beat)[0]) + interval
            key = key - 12 if key > m.high else key
            notes.append(Note(beat, length * 0.92, key, m.velocity_of(rng, 6 if offset == 0 else 0)))
    return notes


def _riff(m: Music, rng: np.random.Generator) -> list[Note]:
    scale = PENTATONIC[m.mode]
    slots = [0] + [slot for slot in range(1, 8) if rng.random() < 0.65]
    motif = [(slot, int(pick(rng, scale)) + 12 * int(rng.integers(0, 2))) for slot in slots]
    power_chords = rng.random() < 0.5
    notes = []
    for bar in m.bars():
        base = m.lowest(m.chord(m.start + 4 * bar)[0])
        for number, (slot, interval) in enumerate(motif):
            beat = m.start + 4 * bar + slot * 0.5
            if beat >= m.end:
                break
            next_slot = motif[number + 1][0] if number + 1 < len(motif) else 8
            length = (next_slot - slot) * 0.5 * 0.9
            key = base + interval
            while key > m.high:
                key -= 12
            velocity = m.velocity_of(rng, 8 if slot == 0 else 0)
            notes.append(Note(beat, length, key, velocity))
            if power_chords and key + 7 <= m.high:
                notes.append(Note(beat, length, key + 7, velocity))
    return notes


# General MIDI Level 1 percussion key map.
KICK, SIDE_STICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, CRASH, RIDE = 36, 37, 38, 39, 42, 46, 49, 51
TOMS = (50, 48, 47, 45)  # high, hi-mid, low-mid, low tom
GROOVES = {  # key -> hit slots on an eighth-note grid of a 4-beat bar
    "rock": {KICK: (0, 4), SNARE: (2, 6), CLOSED_HAT: tuple(range(8))},
    "dance": {KICK: (0, 2, 4, 6), CLAP: (2, 6), OPEN_HAT: (1, 3, 5, 7)},
    "half-time": {KICK: (0, 3), SNARE: (4,), CLOSED_HAT: tuple(range(8))},
    "shuffle": {KICK: (0, 4), SNARE: (2, 6), RIDE: tuple(range(8))},
}


def _beat(m: Music, rng: np.random.Generator, groove: str) -> list[Note]:
    swing = 1.0 / 6.0 if groove == "shuffle" else 0.0  # off-beat eighth moved to the last triplet
    extra_kick = pick(rng, (None, 5, 7))
    notes = []
    for bar in m.bars():
        bar_start = m.start + 4 * bar
        fill = bar % 4 == 3 and rng.random() < 0.7
        pattern = {key: list(slots) for key, slots in GROOVES[groove].items()}
        if extra_kick is not None and rng.random() < 0.5:
            pattern[KICK].append(extra_kick)
        for key, slots in pattern.items():
            for slot in slots:
                if fill and slot >= 6:
                    continue
                beat = bar_start + slot * 0.5 + (swing if slot % 2 else 0.0)
                if beat < m.end:
                    loud = key in (KICK, SNARE, CLAP)
                    accent = 15 if loud else -15 if slot % 2 else 0
                    notes.append(Note(beat, 0.25, key, m.velocity_of(rng, accent)))
        if fill:
            for step in range(4):
                beat = bar_start + 3 + 0.25 * step
                if beat < m.end:
                    notes.append(Note(beat, 0.25, TOMS[step], m.velocity_of(rng, 10)))
        if bar % 4 == 0 and rng.random() < 0.5:
            notes.append(Note(bar_start, 1.0, CRASH, m.velocity_of(rng, 10)))
    return notes


def describe_instrument(keyword: str, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Draw everything an instrument clip needs (rendering then uses no other randomness)."""
    instrument = INSTRUMENTS_BY_KEYWORD[keyword]
    style = pick(rng, instrument.styles)
    mode = pick(rng, ("major", "minor"))
    bpm = float(rng.uniform(60.0, 160.0))
    width = min(instrument.high - instrument.low, int(rng.integers(16, 25)))
    low = int(rng.integers(instrument.low, instrument.high - width + 1))
    params = {
        "instrument": keyword,
        "program": int(pick(rng, instrument.programs)),
        "style": style,
        "groove": pick(rng, GROOVE_NAMES),
        "bpm": bpm,
        "root": int(rng.integers(12)),
        "mode": mode,
        "progression": pick(rng, PROGRESSIONS[mode]),
        "beats_per_chord": 4 if style in ("chords", "strumming", "riff") else int(pick(rng, (2, 4))),
        "low": low,
        "high": low + width,
        "start_seconds": float(rng.uniform(0.0, 0.8)),
        "velocity": int(rng.integers(70, 106)),
        "reverb": int(rng.integers(20, 91)),
        "render_seed": int(rng.integers(2**31)),
    }
    fields = {
        "a_noun": with_article(instrument.noun),
        "noun": instrument.noun,
        "verb": instrument.verb,
        "played_on": _played_on(instrument),
        "tempo": _tempo_word(bpm),
        "mood": pick(rng, MOODS[mode]),
        "mode": mode,
        "groove": params["groove"],
    }
    return params, draw_captions(CAPTION_TEMPLATES[style], fields, rng)


def instrument_notes(params: dict) -> list[Note]:
    """The notes of an instrument clip, from its drawn parameters."""
    rng = np.random.default_rng(params["render_seed"])
    beats_per_second = params["bpm"] / 60.0
    music = Music(
        bpm=params["bpm"],
        root=params["root"],
        mode=params["mode"],
        progression=tuple(params["progression"]),
        beats_per_chord=params["beats_per_chord"],
        low=params["low"],
        high=params["high"],
        start=params["start_seconds"] * beats_per_second,
        end=(CLIP_SECONDS + 0.5) * beats_per_second,
        velocity=params["velocity"],
    )
    style = params["style"]
    if style == "beat":
        return _beat(music, rng, params["groove"])
    makers = {"melody": _melody, "chords": _chords, "strumming": _strumming,
              "arpeggio": _arpeggio, "bassline": _bassline, "riff": _riff}
    return makers[style](music, rng)


# ---------------------------------------------------------------- fluidsynth rendering

def render_instrument(params: dict, soundfont: Path, workdir: Path) -> np.ndarray:
    """Render an instrument clip with fluidsynth; float32 (samples,) at SAMPLE_RATE."""
    instrument = INSTRUMENTS_BY_KEYWORD[params["instrument"]]
    channel = DRUM_CHANNEL if instrument.drums else 0
    midi = workdir / "clip.mid"
    wav = workdir / "clip.wav"
    notes = instrument_notes(params)
    midi.write_bytes(midi_file(notes, params["bpm"], params["program"], channel, params["reverb"]))
    command = [FLUIDSYNTH, "-ni", "-q", "-g", FLUIDSYNTH_GAIN, "-O", "float", "-F", str(wav),
               "-r", str(SAMPLE_RATE), str(soundfont), str(midi)]
    return run_renderer(command, wav, " ".join(command))


def find_soundfont(soundfont: str | os.PathLike | None = None) -> Path:
    """The given soundfont, or the default one; raises CorpusError naming the apt package."""
    path = Path(soundfont) if soundfont is not None else DEFAULT_SOUNDFONT
    if not path.is_file():
        raise CorpusError(
            f"no soundfont at {path}: install the General MIDI soundfont with "
            "`apt-get install fluid-soundfont-gm`, or pass --soundfont PATH (e.g. "
            "/usr/share/sounds/sf2/TimGM6mb.sf2 from timgm6mb-soundfont)"
        )
    return path.resolve()
