"""nbgrader configuration for the course; instructors run nbgrader from this folder.

source = solutions/notebooks (full notebooks with solutions and hidden tests)
release = chapters (what learners get)
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def nbgrader_command() -> str | None:
    """The nbgrader subcommand this process runs (``autograde``...), or None when this file is
    loaded by something else: JupyterLab loads it too, through nbgrader's server extension,
    and a learner's kernels must not inherit grading settings."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    is_nbgrader = program.name == "nbgrader" or (program.name == "__main__.py" and program.parent.name == "nbgrader")
    return sys.argv[1] if is_nbgrader and len(sys.argv) > 1 else None


if nbgrader_command() in ("autograde", "validate"):
    # Autograding runs the notebook in a fresh kernel inside submitted/<student>/<chapter>/.
    # Without the course root on the kernel's path, `import autograder` fails in every test
    # cell and every checkpoint scores 0 without saying why.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # Grading a student's notebook must not count as the instructor's own progress.
    os.environ["COURSE_RECORD_PROGRESS"] = "0"
    # A failing checkpoint is an error here (scored 0); while studying it is only shown.
    os.environ["COURSE_CHECK_MODE"] = "grade"

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions/notebooks"
c.CourseDirectory.release_directory = "chapters"
c.CourseDirectory.course_id = "build-an-llm"

# A runaway cell cannot hold the grader forever; chapters are sized to run in minutes.
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True

# A submission that deleted or edited a test cell gets the original back before grading.
c.OverwriteCells.add_missing_cells = True

# Feedback shows what failed and the hint, never the hidden tests' code.
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "nbgrader.preprocessors.ClearHiddenTests",
]

# Keep a learner's print-happy loop from turning the feedback into megabytes.
c.LimitOutput.max_lines = 200
c.LimitOutput.max_length = 20000
