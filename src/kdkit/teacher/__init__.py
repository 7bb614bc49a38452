"""Teacher outputs computed ahead of training: the cache format (``cache``) and its builder (``build``)."""

from kdkit.teacher.cache import TeacherCache

__all__ = ["TeacherCache"]
