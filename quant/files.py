"""Writing result files so that a reader, or a crash, never sees half of one."""
import os


def atomic_write(path, write):
    """Calls ``write(tmp)`` to fill a temporary file beside ``path``, then
    renames it over ``path``. The rename is atomic on one file system, so
    ``path`` holds either the old content or the whole new one; on any error
    the temporary file is removed and ``path`` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
