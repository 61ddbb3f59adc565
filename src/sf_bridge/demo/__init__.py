"""`sf-bridge demo`: the whole product on sample deals, against the sandbox org and Stripe emulator.

`scenario` holds the sample deals and what each must become; `driver` starts everything and
closes the deals; `facts` reads back what really happened; `checks` holds it against the
expectations; `view` draws it.
"""

from sf_bridge.demo.driver import DemoOptions, run_demo

__all__ = ["DemoOptions", "run_demo"]
