"""Layer 5: when requests go. plan.py turns exchanges into a pure plan of deadlines and lanes;
clock.py holds real and fake clocks; engine.py is the open-loop asyncio engine in its own thread;
target.py declares the seams the engine owns (Target, RequestPipeline, Observation, TargetError).
Imports http only: targets/ and policy/ implement its Protocols."""
