"""zsteer.jobs: the batch edit job (`zsteer edit`) and the command line.

One module, one job:

- ``config``: frozen settings of a job (what the CLI parses into);
- ``sources``: --manifest arguments (files, directories, globs) -> sorted Parquet files;
- ``manifest``: the manifest contract and the whole-file checks made before any work;
- ``reader``: units (bounded runs of rows of a row group) streamed in bounded pieces; ``rows``: units, and
  per-row validation -> rows + rejects;
- ``targets``: the job's and each row's targets as weights; ``idset``: duplicate ids across the job;
- ``batcher``: rows of consecutive chunks cut into fixed-size engine batches;
- ``encode``: PNG encoding in worker processes; ``output``: the output shard schema and tables;
- ``writer``: bounded shards and commits; ``folder``: the job folder and its commit protocol;
- ``lock``: one writer per folder; ``identity``: what a resume must match (job.json);
- ``summary``, ``memory``, ``progress``, ``signals``: summary.json, peak memory, progress lines, stopping cleanly;
- ``runner``: ``run_job(JobConfig)``, the job itself; ``sample``: ``zsteer sample``; ``cli``: ``zsteer``.
"""
