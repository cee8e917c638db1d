"""nbgrader configuration for the course; instructors run nbgrader from this folder.

source = solutions/notebooks (full notebooks with solutions and hidden tests)
release = chapters (what learners get)
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# Autograding runs the notebook in a fresh kernel inside submitted/<student>/<chapter>/.
# Without the course root on the kernel's path, `import autograder` fails in every test
# cell and every checkpoint scores 0 without saying why.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
# Grading a student's notebook must not count as the instructor's own progress.
os.environ["COURSE_RECORD_PROGRESS"] = "0"

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
