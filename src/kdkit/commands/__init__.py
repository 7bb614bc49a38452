"""The commands that act on a config or a finished run besides training (`kdkit eval`, `predict`, `cache`,
`kb build`), built on the families, the methods and the run pipeline; ``kdkit.cli`` parses their
arguments."""
