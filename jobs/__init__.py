"""zsteer.jobs: the batch edit job (`zsteer edit`); the command line on top of it is ``zsteer.cli``.

One module, one job (docs/ARCHITECTURE.md has the flow and the seams):

- ``config``: frozen settings of a job (what the CLI parses into);
- ``method``: the edit-method seam and registry; ``ascent_method``: the default method;
- ``backends``: the runtime registry (torch, onnxruntime); ``executor``: the executor seam and
  registry; ``local``: threads on this machine;
- ``sources``: --manifest arguments (files, directories, globs) -> sorted Parquet files;
- ``manifest``: the manifest contract and the whole-file checks made before any work;
- ``rows``: units and per-row validation -> rows + rejects; ``reader``: a unit's rows in bounded pieces;
- ``duplicates``: the job's duplicate ids, found once; ``targets``: the job's and each row's targets;
- ``unit``: ``process_unit``, one unit's work as a plain function; ``commit``: a unit made durable;
- ``encode``: PNG encoding in worker processes; ``folder``: the job folder and its commit protocol;
  ``verify``: committed files checked against their markers (on resume, and `zsteer verify`);
- ``lock``: one writer per folder; ``identity``: what a resume must match (job.json);
- ``summary``, ``memory``, ``progress``, ``signals``: summary.json, peak memory, progress lines, stopping cleanly;
- ``runner``: ``run_job(JobConfig)``, the job itself; ``sample``: ``zsteer sample`` (a manifest of
  z ~ N(0, I), the job's input format); ``sheet``: a job's before/after contact sheet.

Nothing here imports ``zsteer.cli`` or ``zsteer.demo``.
"""
