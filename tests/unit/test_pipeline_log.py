"""pipeline.log shows a running stage's lines as they are printed, not when the run ends."""
import subprocess
import sys

from eagrl.pipeline_run import pipeline_log


def test_a_components_lines_reach_pipeline_log_while_the_run_goes_on(tmp_path):
    path = tmp_path / "pipeline.log"
    with pipeline_log(path):
        # what KFP's local runner does with a component's output: read it line by line and print each one
        child = subprocess.run([sys.executable, "-c", "print('sft step 1/36 loss 1.0')"], capture_output=True,
                               text=True, check=True)
        print(child.stdout, end="")
        print("a warning", file=sys.stderr)
        seen = path.read_text()  # read by another file object, as `tail -f` would, while the run still holds it
        assert "sft step 1/36 loss 1.0\n" in seen and "a warning\n" in seen
    assert path.read_text() == seen
