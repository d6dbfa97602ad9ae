"""Fixtures shaped like the face datasets researchers bring, in their official file naming: CK+48
(118 people, 1 to 6 sequences each, rare emotions, 3 near-identical frames per sequence), KDEF
(70 people x 7 emotions x 2 photo series) and RaFD (67 people x 8 emotions). They keep every
person and every class count; frames or angles and image sizes are fewer and smaller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from anonemo.data.synthetic import SyntheticFaces

# CK+48's public shape: how many people have 1..6 labelled sequences, and how many sequences
# (each of a different person) show each emotion.
CKPLUS48_SEQUENCES_PER_PERSON = {1: 21, 2: 22, 3: 47, 4: 20, 5: 7, 6: 1}
CKPLUS48_SEQUENCES_PER_EMOTION = {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69,
                                  "sadness": 28, "surprise": 83}
# the synthetic generator's expression drawn for each class (contempt has no prototype of its own)
DRAWN_AS = {"anger": "anger", "contempt": "neutral", "disgust": "disgust", "fear": "fear", "happy": "happy",
            "sadness": "sad", "surprise": "surprise", "afraid": "fear", "angry": "anger", "disgusted": "disgust",
            "neutral": "neutral", "sad": "sad", "surprised": "surprise", "contemptuous": "neutral",
            "fearful": "fear"}


def faces_of(people: int, seed: int) -> dict[tuple[int, str], np.ndarray]:
    """One synthetic face per person and synthetic expression."""
    generator = SyntheticFaces(num_subjects=people, num_emotions=7, images_per_cell=1, generator_seed=seed)
    faces = generator.load()
    return {(int(s), generator.emotion_names[e]): image for s, e, image in zip(faces.subjects, faces.emotions, faces.images)}


def near_copies(image: np.ndarray, count: int, rng: np.random.Generator, size: int) -> list[np.ndarray]:
    """``count`` frames of one moment: the same picture with a little sensor noise each."""
    base = np.asarray(Image.fromarray(image).resize((size, size)), dtype=np.float64)
    return [np.clip(base + rng.normal(0, 2.0, base.shape), 0, 255).astype(np.uint8) for _ in range(count)]


def ckplus48_sequences(seed: int = 0) -> list[tuple[int, str]]:
    """(person, emotion) of every labelled sequence, with CK+48's counts: no person shows an
    emotion twice; the people with the most sequences get the most frequent emotions left."""
    rng = np.random.default_rng(seed)
    counts = [k for k, people in CKPLUS48_SEQUENCES_PER_PERSON.items() for _ in range(people)]
    rng.shuffle(counts)
    left = dict(CKPLUS48_SEQUENCES_PER_EMOTION)
    sequences = []
    for person in np.argsort(counts, kind="stable")[::-1]:
        for emotion in sorted(left, key=lambda e: (-left[e], rng.random()))[: counts[person]]:
            left[emotion] -= 1
            sequences.append((int(person), emotion))
    assert not any(left.values())
    return sorted(sequences)


def write_ckplus48_shaped(root: Path, frames: int = 3, size: int = 48) -> Path:
    """CK+48's layout (``<emotion>/S###_###_########.png``) and shape, frames near-identical."""
    sequences = ckplus48_sequences()
    faces = faces_of(len({p for p, _ in sequences}), seed=11)
    rng = np.random.default_rng(0)
    numbers: dict[int, int] = {}
    for person, emotion in sequences:
        numbers[person] = numbers.get(person, 0) + 1
        folder = root / emotion
        folder.mkdir(parents=True, exist_ok=True)
        first = 10 + int(rng.integers(0, 20))
        for k, frame in enumerate(near_copies(faces[person, DRAWN_AS[emotion]], frames, rng, size)):
            Image.fromarray(frame).save(folder / f"S{person + 5:03d}_{numbers[person]:03d}_{first + k:08d}.png")
    return root


KDEF_EMOTIONS = {"AF": "afraid", "AN": "angry", "DI": "disgusted", "HA": "happy", "NE": "neutral", "SA": "sad",
                 "SU": "surprised"}
KDEF_PEOPLE = [f"{sex}{n:02d}" for sex in "FM" for n in range(1, 36)]
# One posed expression of one series (its angles taken in one sitting) is the group.
KDEF_PATTERN = (r"(?P<group>[AB](?P<subject>[FM]\d\d)/[AB][FM]\d\d(?P<emotion>AF|AN|DI|HA|NE|SA|SU))"
                r"(?:FL|HL|S|HR|FR)\.JPG$")


def write_kdef_shaped(root: Path, angles: tuple[str, ...] = ("S", "HL"), size: int = 32) -> Path:
    """KDEF's layout: ``KDEF/<series><sex><nn>/<series><sex><nn><emotion><angle>.JPG``, 70 people,
    7 emotions, series A and B."""
    faces = faces_of(len(KDEF_PEOPLE), seed=12)
    rng = np.random.default_rng(1)
    for p, person in enumerate(KDEF_PEOPLE):
        for series in "AB":
            folder = root / "KDEF" / f"{series}{person}"
            folder.mkdir(parents=True, exist_ok=True)
            for code, emotion in KDEF_EMOTIONS.items():
                for angle, frame in zip(angles, near_copies(faces[p, DRAWN_AS[emotion]], len(angles), rng, size)):
                    Image.fromarray(frame).save(folder / f"{series}{person}{code}{angle}.JPG", quality=95)
    return root


RAFD_EMOTIONS = ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
RAFD_PEOPLE = 67
# One posed expression (the five cameras fire at once; the three gazes follow) is the group.
RAFD_PATTERN = (r"Rafd\d{3}_(?P<subject>\d+)_[A-Za-z]+_(?:male|female)_(?P<group>(?P<emotion>[a-z]+))"
                r"_(?:frontal|left|right)\.jpg$")


def write_rafd_shaped(root: Path, angles: tuple[str, ...] = ("090",), gazes: tuple[str, ...] = ("frontal", "left"),
                      size: int = 32) -> Path:
    """RaFD's flat folder of ``Rafd<angle>_<nn>_<ethnicity>_<sex>_<emotion>_<gaze>.jpg``, 67 people,
    8 emotions."""
    faces = faces_of(RAFD_PEOPLE, seed=13)
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for person in range(RAFD_PEOPLE):
        ethnicity, sex = ("Caucasian", "Moroccan")[person % 2], ("female", "male")[person // 2 % 2]
        for emotion in RAFD_EMOTIONS:
            shots = [(a, g) for a in angles for g in gazes]
            for (angle, gaze), frame in zip(shots, near_copies(faces[person, DRAWN_AS[emotion]], len(shots), rng, size)):
                Image.fromarray(frame).save(
                    root / f"Rafd{angle}_{person + 1:02d}_{ethnicity}_{sex}_{emotion}_{gaze}.jpg", quality=95)
    return root
