"""The families of tasks (encoder classifiers, causal LMs): what differs between them, behind one
interface (``kdkit.family.base.Family``), chosen once per run from ``config.task``."""

from kdkit.errors import KdkitError
from kdkit.family.base import Family, Job, RunData, Student, Teacher
from kdkit.family.causal_lm import CausalLMFamily
from kdkit.family.classifier import ClassifierFamily

FAMILIES: tuple[Family, ...] = (ClassifierFamily(), CausalLMFamily())


def family_for(task: str) -> Family:
    """The family that serves ``task`` (classification, regression or causal_lm)."""
    for family in FAMILIES:
        if task in family.tasks:
            return family
    raise KdkitError(f"unknown task '{task}'; use classification, regression or causal_lm")


__all__ = ["FAMILIES", "Family", "Job", "RunData", "Student", "Teacher", "family_for"]
