"""Runs the official anthropic SDK's EnvironmentWorker against a CMA endpoint.

Usage: sdk_worker.py BASE_URL ENVIRONMENT_ID WORKDIR
The environment key comes from CORDON_SIM_ENVIRONMENT_KEY. The worker polls until it is
killed; the test that starts it decides when the scenario is done.
"""

import asyncio
import logging
import os
import sys

import anthropic
from anthropic import AsyncAnthropic


async def main() -> None:
    base_url, environment_id, workdir = sys.argv[1:4]
    key = os.environ["CORDON_SIM_ENVIRONMENT_KEY"]
    # The client's own credential is never used by the worker's calls: it re-scopes every
    # request to the environment key (or the item's sessions token) as a Bearer.
    client = AsyncAnthropic(base_url=base_url, auth_token=key, api_key=None, max_retries=4)
    worker = client.beta.environments.work.worker(
        environment_id=environment_id,
        environment_key=key,
        workdir=workdir,
        max_idle=2.0,
    )
    print(f"sdk {anthropic.__version__} worker polling {base_url}", flush=True)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("SDK_LOG", "INFO"), stream=sys.stderr)
    asyncio.run(main())
