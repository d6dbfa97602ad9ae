"""A procedural face dataset in which identity and emotion are separate, controllable factors.

Identity is a set of per-subject traits (face shape, eye spacing and size, nose, skin tone, hair,
glasses, beard, and a personal way of expressing each emotion); emotion is a set of expression
parameters (mouth curve and opening, brow raise and slope, eye opening) drawn at a random
intensity around a prototype. Pose, lighting and sensor noise vary per image. Everything is drawn
from one seed, so the dataset is the same on every machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from anonemo.data.records import FaceRecords, OriginalLabels
from anonemo.errors import ConfigError

CANVAS = 128  # drawing resolution; preprocessing resizes to dataset.image_size

# Expression prototypes: (mouth_curve, mouth_open, brow_raise, brow_slope, eye_open).
# brow_slope > 0 lowers the inner brow ends (anger), < 0 raises them (sadness, fear).
EMOTION_PROTOTYPES: dict[str, tuple[float, float, float, float, float]] = {
    "neutral": (0.0, 0.0, 0.0, 0.0, 1.0),
    "happy": (0.9, 0.25, 0.1, 0.0, 0.8),
    "sad": (-0.7, 0.0, 0.15, -0.6, 0.75),
    "surprise": (0.0, 0.9, 0.8, 0.0, 1.35),
    "anger": (-0.35, 0.1, -0.5, 0.8, 0.9),
    "disgust": (-0.5, 0.35, -0.3, 0.4, 0.6),
    "fear": (-0.25, 0.55, 0.6, -0.5, 1.25),
}
NEUTRAL = np.array(EMOTION_PROTOTYPES["neutral"])


@dataclass(frozen=True)
class SubjectTraits:
    face_axes: tuple[float, float]
    skin: float
    eye_dx: float
    eye_y: float
    eye_size: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    hair_style: int  # 0 bald, 1 cap, 2 long, 3 fringe
    hair_tone: float
    brow_thickness: int
    glasses: bool
    beard: bool
    expression_style: np.ndarray  # personal offsets added to every expression

    @classmethod
    def draw(cls, rng: np.random.Generator) -> SubjectTraits:
        return cls(
            face_axes=(rng.uniform(34, 44), rng.uniform(44, 54)),
            skin=rng.uniform(120, 210),
            eye_dx=rng.uniform(12, 19),
            eye_y=rng.uniform(-17, -9),
            eye_size=rng.uniform(3.5, 6.0),
            nose_length=rng.uniform(8, 16),
            nose_width=rng.uniform(3, 7),
            mouth_width=rng.uniform(13, 19),
            mouth_y=rng.uniform(18, 25),
            hair_style=int(rng.integers(0, 4)),
            hair_tone=rng.uniform(15, 90),
            brow_thickness=int(rng.integers(1, 4)),
            glasses=bool(rng.random() < 0.3),
            beard=bool(rng.random() < 0.25),
            expression_style=rng.normal(0.0, 0.1, size=5),
        )


@dataclass(frozen=True)
class SyntheticFaces:
    """The built-in dataset (``dataset=synthetic``)."""

    num_subjects: int = 10
    num_emotions: int = 7
    images_per_cell: int = 6
    generator_seed: int = 0
    intensity_range: tuple[float, float] = (0.5, 1.1)
    expression_noise: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.num_emotions <= len(EMOTION_PROTOTYPES):
            raise ConfigError(
                f"dataset.num_emotions={self.num_emotions} is out of range: the synthetic generator "
                f"has {len(EMOTION_PROTOTYPES)} expressions ({', '.join(EMOTION_PROTOTYPES)}); use 2..7."
            )
        for option in ("num_subjects", "images_per_cell"):
            if getattr(self, option) < 1:
                raise ConfigError(f"dataset.{option}={getattr(self, option)} must be at least 1.")

    @property
    def emotion_names(self) -> tuple[str, ...]:
        return tuple(EMOTION_PROTOTYPES)[: self.num_emotions]

    def fingerprint(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()

    def labels(self) -> OriginalLabels:
        cells = [(s, e, k) for s in range(self.num_subjects) for e in range(self.num_emotions)
                 for k in range(self.images_per_cell)]
        return OriginalLabels.of(
            subjects=[s for s, _, _ in cells],
            emotions=[e for _, e, _ in cells],
            subject_names=[f"s{s:02d}" for s in range(self.num_subjects)],
            emotion_names=self.emotion_names,
            source_names=[f"s{s:02d}_{self.emotion_names[e]}_{k}" for s, e, k in cells],
        )

    def load(self) -> FaceRecords:
        rng = np.random.default_rng(self.generator_seed)
        traits = [SubjectTraits.draw(rng) for _ in range(self.num_subjects)]
        labels = self.labels()
        images = [self._render(traits[s], np.array(EMOTION_PROTOTYPES[self.emotion_names[e]]), rng)
                  for s, e in zip(labels.subjects, labels.emotions)]
        return labels.with_images(images)

    def _render(self, face: SubjectTraits, prototype: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        intensity = rng.uniform(*self.intensity_range)
        expression = NEUTRAL + intensity * (prototype - NEUTRAL) + face.expression_style
        expression = expression + rng.normal(0.0, self.expression_noise, size=5)
        curve, mouth_open, brow_raise, brow_slope, eye_open = expression
        mouth_open, eye_open = max(mouth_open, 0.0), float(np.clip(eye_open, 0.3, 1.6))

        background = rng.uniform(20, 90)
        img = np.full((CANVAS, CANVAS), background, np.float32)
        cx, cy = CANVAS / 2, CANVAS / 2 + 4
        hair = face.hair_tone
        ax, ay = face.face_axes
        if face.hair_style == 2:  # long hair behind the face
            cv2.ellipse(img, _pt(cx, cy + 6), _pt(ax + 9, ay + 12), 0, 0, 360, hair, -1, cv2.LINE_AA)
        cv2.ellipse(img, _pt(cx, cy), _pt(ax, ay), 0, 0, 360, face.skin, -1, cv2.LINE_AA)
        if face.hair_style in (1, 2):  # cap of hair over the top of the head
            cv2.ellipse(img, _pt(cx, cy - ay * 0.35), _pt(ax + 2, ay * 0.75), 0, 180, 360, hair, -1, cv2.LINE_AA)
        elif face.hair_style == 3:  # fringe
            cv2.ellipse(img, _pt(cx, cy - ay * 0.55), _pt(ax * 0.95, ay * 0.45), 0, 180, 360, hair, -1, cv2.LINE_AA)

        eye_y = cy + face.eye_y
        dark, white = face.skin * 0.35, min(face.skin + 45, 255)
        for side in (-1, 1):
            ex = cx + side * face.eye_dx
            axes = _pt(face.eye_size * 1.4, max(face.eye_size * 0.75 * eye_open, 1))
            cv2.ellipse(img, _pt(ex, eye_y), axes, 0, 0, 360, white, -1, cv2.LINE_AA)
            cv2.circle(img, _pt(ex, eye_y), max(int(round(face.eye_size * 0.6 * min(eye_open, 1.0))), 1), dark, -1, cv2.LINE_AA)
            brow_y = eye_y - face.eye_size - 5 - 7 * brow_raise
            inner = _pt(cx + side * (face.eye_dx - face.eye_size * 1.5), brow_y + 5 * brow_slope)
            outer = _pt(cx + side * (face.eye_dx + face.eye_size * 1.6), brow_y - 3 * brow_slope)
            cv2.line(img, inner, outer, hair * 0.8, face.brow_thickness, cv2.LINE_AA)
            if face.glasses:
                cv2.circle(img, _pt(ex, eye_y), int(face.eye_size * 2.2), 25, 1, cv2.LINE_AA)
        if face.glasses:
            cv2.line(img, _pt(cx - face.eye_dx + face.eye_size * 2.2, eye_y),
                     _pt(cx + face.eye_dx - face.eye_size * 2.2, eye_y), 25, 1, cv2.LINE_AA)

        nose_top, nose_tip = eye_y + 4, eye_y + 4 + face.nose_length
        nose = np.array([_pt(cx, nose_top), _pt(cx - face.nose_width, nose_tip), _pt(cx + face.nose_width, nose_tip)])
        cv2.polylines(img, [nose], False, face.skin * 0.7, 1, cv2.LINE_AA)

        mouth_y = cy + face.mouth_y
        if face.beard:
            cv2.ellipse(img, _pt(cx, mouth_y + 14), _pt(ax * 0.55, 9), 0, 0, 360, hair, -1, cv2.LINE_AA)
        xs = np.linspace(-face.mouth_width, face.mouth_width, 15)
        upper = mouth_y + 9 * curve * (1 - (xs / face.mouth_width) ** 2)
        lower = upper + 12 * mouth_open * (1 - (xs / face.mouth_width) ** 2)
        lip = face.skin * 0.55
        if mouth_open > 0.05:
            polygon = np.concatenate([np.stack([cx + xs, upper], 1), np.stack([cx + xs, lower], 1)[::-1]])
            cv2.fillPoly(img, [np.round(polygon).astype(np.int32)], 15, cv2.LINE_AA)
        for ys in (upper, lower):
            cv2.polylines(img, [np.round(np.stack([cx + xs, ys], 1)).astype(np.int32)], False, lip, 2, cv2.LINE_AA)

        img = _jitter(img, rng)
        return np.clip(img, 0, 255).astype(np.uint8)


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pose (rotation, scale, shift), lighting (gain and a gradient) and sensor noise."""
    matrix = cv2.getRotationMatrix2D((CANVAS / 2, CANVAS / 2), rng.uniform(-10, 10), rng.uniform(0.92, 1.08))
    matrix[:, 2] += rng.uniform(-4, 4, size=2)
    img = cv2.warpAffine(img, matrix, (CANVAS, CANVAS), borderMode=cv2.BORDER_REPLICATE)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / CANVAS - 0.5
    gradient = rng.uniform(0, 50) * (np.cos(angle) * xx + np.sin(angle) * yy)
    return img * rng.uniform(0.8, 1.15) + gradient + rng.normal(0, rng.uniform(2, 8), img.shape)
