"""ime-sim: an IME-compatible server over a synthetic market, with fault injection."""

from recorder.sim.app import SimConfig, SimHandle, start_sim
from recorder.sim.faults import Fault, FaultConfig, FaultPlan
from recorder.sim.market import ContractSpec, Market, make_contracts

__all__ = [
    "ContractSpec", "Fault", "FaultConfig", "FaultPlan", "Market", "SimConfig", "SimHandle", "make_contracts",
    "start_sim",
]
