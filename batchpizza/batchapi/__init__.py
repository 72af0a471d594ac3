"""Half price: a run's requests through a provider's Batch API (--via batch, --via auto).

settings.py the options and limits; files.py the request lines and how they are split into
files; client.py the HTTP calls; flow.py the run: plan, upload, create, poll, download, commit;
results.py what a result line means for its row; display.py the batches as status shows them.
The checkpoint's records of files, batches and lines are checkpoint/batches.py's.
"""
