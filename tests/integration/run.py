"""Runs every integration test module (test_*.py here) and prints one summary line:
INTEGRATION: N passed, N failed"""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py", top_level_dir=here)
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
passed = result.testsRun - failed - len(result.skipped)
print(f"INTEGRATION: {passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)
