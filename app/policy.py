"""Server-wide rules on what a request may do, whoever asks: MLflow 3.18's immutable `skills/` tree.

Authorization (app/auth.py) decides who may touch a path; these rules hold for everyone, with auth on or off, and
each lives here once: `authorize` applies the skills rule to every write and delete.
"""

from __future__ import annotations

from app.errors import PermissionDenied
from app.paths import ArtifactPath

SKILLS_ROOT = "skills"
WORKSPACES_ROOT = "workspaces"
SKILL_IMMUTABLE = "Skill upload content is immutable; register a new version instead"


def is_skill_upload(path: ArtifactPath) -> bool:
    """Whether `path` is in the tree where an MLflow tracking server keeps registered skill versions: first segment
    `skills` in any case, also after `workspaces/<ws>/`. A registered version points at these bytes, so changing
    them would change a version behind its users' backs. Only the first segment counts: `1/skills/x` is a run's."""
    segments = path.segments
    if len(segments) >= 2 and segments[0].lower() == WORKSPACES_ROOT:
        segments = segments[2:]
    return bool(segments) and segments[0].lower() == SKILLS_ROOT


def refuse_skill_mutation(path: ArtifactPath) -> None:
    """403 for a write or delete in the skills tree (PUT, DELETE, mpu/*); reads and listings stay open."""
    if is_skill_upload(path):
        raise PermissionDenied(SKILL_IMMUTABLE)
