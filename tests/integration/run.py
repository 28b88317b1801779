"""Runs every integration test module (test_*.py here) and prints one summary line:
INTEGRATION: N passed, N failed, N discovered
A skipped test counts as failed (none is meant to skip: a missing dependency fails), and
a run that ran fewer tests than it discovered fails."""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
suite = unittest.defaultTestLoader.discover(here, pattern="test_*.py", top_level_dir=here)
discovered = suite.countTestCases()
result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses) + len(result.skipped)
passed = result.testsRun - failed
print(f"INTEGRATION: {passed} passed, {failed} failed, {discovered} discovered")
sys.exit(0 if failed == 0 and result.testsRun == discovered and discovered > 0 else 1)
