"""The workflow's distillation stages: `teacher_from` makes the teacher's network an input of the
student's training job and writes loss.teacher / loss.teacher_id into its config; a teacher that is
not an enabled experiment stops the workflow before any job (dry runs of the demo + demo_long)."""

import re

from helpers import ROOT, assert_stopped_before_any_job, jobs, snakemake, write_yaml

OVERLAY = str(ROOT / "workflow/config/demo_long.yaml")


def test_demo_long_distils_the_demo_edm(tmp_path):
    res = snakemake(tmp_path, "all", "-n", "-p", "--configfile", OVERLAY)
    assert res.returncode == 0, res.stdout[-3000:]
    train = {j["wildcards"]: j for j in jobs(res.stdout) if j["rule"] == "train"}
    for exp in ("cd", "bcd"):
        job = train[f"ds=digits, exp={exp}"]
        assert "results/digits/runs/edm/network-final.pt" in job["input"]
    # the run configs (config.json text in the dry run's shell commands)
    assert '"teacher": "results/digits/runs/edm/network-final.pt"' in res.stdout
    assert len(set(re.findall(r'"teacher_id": "([0-9a-f]{16})"', res.stdout))) == 1


def test_unknown_teacher_stops_before_any_job(tmp_path):
    over = write_yaml(
        tmp_path / "over.yaml",
        {
            "datasets": {
                "digits": {
                    "experiments": {
                        "cd": {
                            "teacher_from": "edn",
                            "model": {"kind": "cm"},
                            "loss": {"kind": "cd"},
                        }
                    }
                }
            }
        },
    )
    res = snakemake(tmp_path, "-n", "--configfile", over)
    assert_stopped_before_any_job(
        res, tmp_path, "datasets.digits.experiments.cd.teacher_from: 'edn' is not an enabled"
    )
