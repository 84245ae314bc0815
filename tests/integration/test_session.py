"""runtime/session.ensure_ray: the job's worker processes get Ray Data's paced scheduling loop."""

from __future__ import annotations


def test_worker_processes_run_ray_data_with_the_paced_loop(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def paced_here() -> bool:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor

        from raylpclip.runtime.cluster import idle_scheduler

        return getattr(StreamingExecutor._scheduling_loop_step, idle_scheduler._MARK, False)

    assert ray.get(paced_here.remote()), "the job's worker_process_setup_hook did not pace Ray Data's loop in a worker"
