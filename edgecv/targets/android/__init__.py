"""Android device helpers (adb). See :mod:`edgecv.targets.android.adb`."""
