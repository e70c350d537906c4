"""A rich progress display with one bar per partition (or nothing when disabled)."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._p = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TimeElapsedColumn(), TextColumn("{task.fields[status]}"))
            self._p.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._p.__exit__(*exc)

    def bar(self, description: str):
        """A callback: ``bar(total=n)``, ``bar(advance=k)``, ``bar(done=True, status="written")``."""
        if not self.enabled:
            return lambda **kw: None
        task_id = self._p.add_task(description, total=None, status="")

        def update(total=None, advance=None, done=False, status=""):
            if total is not None:  # (again when a partition starts over, e.g. at a smaller batch size)
                self._p.update(task_id, total=total, completed=0)
            if advance:
                self._p.advance(task_id, advance)
            if done:
                t = self._p.tasks[task_id]
                self._p.update(task_id, total=t.total or 1, completed=t.total or 1, status=status)

        return update
