"""What reaches the user's console of a run's worker output: raylpclip's lines and tracebacks, not Ray's
internal chatter; all of it with --verbose."""

from __future__ import annotations

from raylpclip.runtime.cluster import console

RAY_CHATTER = [
    "[2026-12-06 22:50:55,218 E 32304 32361] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'7c42' has constructor arguments in the object store and max_restarts > 0.",
    "/venv/lib/python3.11/site-packages/ray/data/_internal/execution/interfaces/execution_options.py:436: "
    "RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated",
    "  self.exclude_resources = exclude_resources",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "✔️  Dataset train_035AEBCEKsgun9uvVisopm_0 execution finished in 11.73 seconds",
]


def test_only_our_lines_and_tracebacks_are_kept():
    ours = "[raylpclip] step 25/500 loss 4.8723 a_t 0.012"
    assert console.kept_lines(RAY_CHATTER + [ours]) == [ours]
    traceback = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ValueError: bad shard"]
    assert console.kept_lines([RAY_CHATTER[0], *traceback]) == traceback
    assert console.kept_lines(["DataError: shards s3://b/x.tar have keys [a]"]) == ["DataError: shards s3://b/x.tar have keys [a]"]


def test_the_filter_replaces_rays_printing_and_prints_without_the_prefix(capsys, monkeypatch):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from ray._private import worker as ray_worker

    printed, raylet = [], []
    monkeypatch.setattr(dispatcher, "handlers", [(console.HANDLER, lambda data: printed.append(data))])
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix=False: raylet.append(data))
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert console.install_filter()
    dispatcher.emit({"pid": 123, "actor_name": "RayTrainWorker", "is_err": False,
                     "lines": RAY_CHATTER + ["[raylpclip] step 50/500 loss 3.7"]})
    dispatcher.emit({"pid": "raylet", "is_err": False, "lines": ["WARNING: 8 PYTHON worker processes have been started"]})
    assert capsys.readouterr().out == "[raylpclip] step 50/500 loss 3.7\n" and printed == []


def test_verbose_keeps_rays_own_printing(monkeypatch):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    original = (console.HANDLER, lambda data: None)
    monkeypatch.setattr(dispatcher, "handlers", [original])
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert not console.install_filter() and dispatcher.handlers == [original]


def test_the_raylets_burst_notes_are_dropped_its_real_messages_kept(monkeypatch):
    """The raylet's messages reach the driver through print_to_stdstream, not the dispatcher."""
    from ray._private import worker as ray_worker

    printed = []
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix=False: printed.append(data))
    monkeypatch.setattr("ray._private.ray_logging.global_worker_stdstream_dispatcher.handlers",
                        [(console.HANDLER, lambda data: None)])
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert console.install_filter()
    burst = {"pid": "raylet", "is_err": False, "lines": [
        "WARNING: 10 PYTHON worker processes have been started on node: 1158 with address: 127.0.0.1, which is 5x"]}
    oom = {"pid": "raylet", "is_err": False, "lines": ["Task was killed due to the node running low on memory."]}
    ray_worker.print_to_stdstream(burst)
    ray_worker.print_to_stdstream(oom, ignore_prefix=False)
    assert printed == [oom]
    assert console.install_filter()  # a second session in the same process does not wrap it twice
    ray_worker.print_to_stdstream(burst)
    assert printed == [oom]


def test_the_drivers_own_ray_notices(monkeypatch):
    import logging

    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    console.quiet_driver()
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    record = notice.makeRecord(notice.name, logging.WARNING, __file__, 1,
                               "Token authentication is enabled for this Ray cluster.", (), None)
    assert not notice.filter(record)  # said once by raylpclip's session line instead
    other = notice.makeRecord(notice.name, logging.WARNING, __file__, 1, "the token file is unreadable", (), None)
    assert notice.filter(other)
    assert console.init_logging_level() == logging.WARNING  # not "Started a local Ray instance" (INFO)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.init_logging_level() == logging.INFO
