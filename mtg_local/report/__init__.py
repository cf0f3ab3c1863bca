"""Reports over many run dirs: collect results.json files, Table-2-shaped tables, plots."""

from mtg_local.report.collect import Collection, Problem, RunRecord, collect, parse_results

__all__ = ["Collection", "Problem", "RunRecord", "collect", "parse_results", "write_report"]


def write_report(paths, out_dir, *, plots: bool = True):
    """Collects ``paths`` and writes report.md, results.csv, problems.csv and PNGs into ``out_dir``.

    Returns:
        (Collection, list of written file paths).
    """
    from mtg_local.report.build import write_report as _write

    return _write(paths, out_dir, plots=plots)
